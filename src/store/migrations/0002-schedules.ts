import { Migration } from '@mikro-orm/migrations';

/**
 * Periodic schedules: their definition as last started, their state (paused,
 * next and last fire) and counters. `next_fire_at` is the tick an instance
 * claims with one conditional update, so a tick fires once across restarts
 * and replicas. `pending_job_id` records a claimed run whose job is not yet
 * created; whoever sees it creates that job (its id is fixed) and clears it.
 */
export class Migration0002Schedules extends Migration {
  override name = '0002-schedules';

  override up(): void {
    const s = `"${this.config.get('schema')}"`;
    this.addSql(`
      create table ${s}.schedules (
        name text primary key,
        job_type text not null,
        spec jsonb not null,
        enabled boolean not null default true,
        allow_overlap boolean not null default false,
        misfire_grace_ms integer not null,
        paused boolean not null default false,
        next_fire_at timestamptz,
        last_fire_at timestamptz,
        last_job_id uuid,
        pending_job_id uuid,
        pending_fire_at timestamptz,
        runs integer not null default 0,
        missed integer not null default 0,
        skipped integer not null default 0,
        created_at timestamptz not null default now(),
        updated_at timestamptz not null default now()
      )`);
  }
}

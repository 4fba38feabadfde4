import { Migration } from '@mikro-orm/migrations';

/** Jobs with their persisted actor snapshots, and the history of their transitions. */
export class Migration0001Jobs extends Migration {
  override name = '0001-jobs';

  override up(): void {
    const s = `"${this.config.get('schema')}"`;
    this.addSql(`create schema if not exists ${s}`);
    this.addSql(`
      create table ${s}.jobs (
        id uuid primary key,
        job_type text not null,
        state text not null check (state in (
          'pending', 'dispatched', 'awaiting-ack', 'failed', 'retrying',
          'succeeded', 'dead', 'cancelled')),
        attempt integer not null default 0,
        max_attempts integer not null,
        scheduled_for timestamptz not null,
        next_at timestamptz,
        expires_at timestamptz,
        subject text,
        idempotency_key text unique,
        metadata jsonb not null default '{}',
        result jsonb,
        last_error text,
        snapshot jsonb not null,
        machine_version integer not null,
        version integer not null default 1,
        outbox jsonb,
        restore_error text,
        created_at timestamptz not null default now(),
        updated_at timestamptz not null default now(),
        finished_at timestamptz
      )`);
    // Restore and the horizon read only waiting jobs, by the instant they wait for.
    this.addSql(`
      create index jobs_waiting_next_at on ${s}.jobs (next_at)
      where state in ('pending', 'dispatched', 'awaiting-ack', 'retrying')`);
    this.addSql(`create index jobs_state_type on ${s}.jobs (state, job_type)`);
    this.addSql(`create index jobs_scheduled_for on ${s}.jobs (scheduled_for, id)`);
    this.addSql(`create index jobs_subject on ${s}.jobs (subject) where subject is not null`);
    this.addSql(`
      create table ${s}.job_transitions (
        id bigint generated always as identity primary key,
        job_id uuid not null references ${s}.jobs (id) on delete cascade,
        from_state text,
        to_state text not null,
        event text not null,
        attempt integer not null,
        at timestamptz not null,
        detail jsonb
      )`);
    this.addSql(`create index job_transitions_job on ${s}.job_transitions (job_id, id)`);
  }
}

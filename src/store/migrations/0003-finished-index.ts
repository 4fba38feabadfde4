import { Migration } from '@mikro-orm/migrations';

/**
 * The history clean-up deletes finished jobs by age (the same expression as in
 * src/store/retention.ts); without this index each of its batches read the
 * finished jobs of every type through (state, job_type).
 */
export class Migration0003FinishedIndex extends Migration {
  override name = '0003-finished-index';

  override up(): void {
    const s = `"${this.config.get('schema')}"`;
    this.addSql(`
      create index jobs_finished_at on ${s}.jobs ((coalesce(finished_at, updated_at)))
      where state in ('succeeded', 'dead', 'cancelled')`);
  }
}

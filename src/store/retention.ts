import type pg from 'pg';
import type { Logger } from 'pino';

/** What one statement, or one run, of the clean-up deleted. */
export interface Deleted {
  jobs: number;
  transitions: number;
}

/**
 * Deletes up to `limit` finished jobs (succeeded, dead, cancelled) that
 * finished before `before`, with their transitions. Rows another session
 * holds locked are skipped, so two replicas cleaning at once do not queue
 * behind each other. A final row without `finished_at` falls back to
 * `updated_at`, so no finished job outlives the retention for lack of it.
 */
export async function deleteFinishedJobs(
  pool: pg.Pool,
  schema: string,
  before: Date,
  limit: number,
): Promise<Deleted> {
  const { rows } = await pool.query<Deleted>(
    `with doomed as (
       select id
       from "${schema}".jobs
       where state in ('succeeded', 'dead', 'cancelled')
         and coalesce(finished_at, updated_at) < $1
       limit $2
       for update skip locked
     ), gone_transitions as (
       delete from "${schema}".job_transitions t
       using doomed d
       where t.job_id = d.id
       returning 1
     ), gone_jobs as (
       delete from "${schema}".jobs j
       using doomed d
       where j.id = d.id
       returning 1
     )
     select (select count(*) from gone_jobs)::int as jobs,
            (select count(*) from gone_transitions)::int as transitions`,
    [before.toISOString(), limit],
  );
  return rows[0] ?? { jobs: 0, transitions: 0 };
}

export interface RetentionOptions {
  pool: pg.Pool;
  schema: string;
  logger: Logger;
  /** Finished jobs older than this are deleted, in ms (HISTORY_RETENTION_DAYS). */
  maxAgeMs: number;
  /** Time between the end of one run and the start of the next, in ms. */
  intervalMs: number;
  /** Jobs deleted per statement (RETENTION_BATCH_SIZE). */
  batchSize: number;
  /** Pause between two statements of one run, in ms; default 50. */
  pauseMs?: number;
  /** Clock in epoch ms; default `Date.now`. */
  now?: () => number;
  /** Told what each run deleted. */
  onDeleted?: (deleted: Deleted) => void;
}

/** A service restarted more often than the interval still cleans soon after start. */
const FIRST_RUN_MAX_DELAY_MS = 60_000;
const DEFAULT_PAUSE_MS = 50;

/**
 * The periodic history clean-up. Each run deletes old finished jobs in
 * statements of `batchSize` rows with a short pause between them, so the
 * group commit and the rest of the pool's users get their turn; runs never
 * overlap (the next is timed from the end of the last).
 */
export class HistoryRetention {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<Deleted> | undefined;
  private wakePause: (() => void) | undefined;
  private stopping = false;
  private nextAt: number | null = null;

  constructor(private readonly options: RetentionOptions) {}

  /** When the next run starts, epoch ms; null when none is planned. */
  get nextRunAt(): number | null {
    return this.nextAt;
  }

  /** Plans the first run, within a minute of start-up at most. */
  start(): void {
    this.plan(Math.min(this.options.intervalMs, FIRST_RUN_MAX_DELAY_MS));
  }

  /** Runs one clean-up now; a run already going is joined, not doubled. */
  runOnce(): Promise<Deleted> {
    this.running ??= this.run().finally(() => (this.running = undefined));
    return this.running;
  }

  /** Cancels the planned run and waits for a running one to finish its statement. */
  async stop(): Promise<void> {
    this.stopping = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    this.nextAt = null;
    this.wakePause?.();
    await this.running?.catch(() => {});
  }

  private plan(delayMs: number): void {
    if (this.stopping) return;
    const now = this.options.now ?? Date.now;
    this.nextAt = now() + delayMs;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.nextAt = null;
      this.runOnce()
        .catch((err: unknown) => {
          this.options.logger.error({ err }, 'history clean-up failed; trying again next interval');
        })
        .finally(() => this.plan(this.options.intervalMs));
    }, delayMs);
  }

  private async run(): Promise<Deleted> {
    const { pool, schema, logger, batchSize, maxAgeMs } = this.options;
    const now = this.options.now ?? Date.now;
    const before = new Date(now() - maxAgeMs);
    const started = performance.now();
    const total: Deleted = { jobs: 0, transitions: 0 };
    let batches = 0;
    while (!this.stopping) {
      const deleted = await deleteFinishedJobs(pool, schema, before, batchSize);
      batches += 1;
      total.jobs += deleted.jobs;
      total.transitions += deleted.transitions;
      if (deleted.jobs < batchSize) break;
      await this.pause(this.options.pauseMs ?? DEFAULT_PAUSE_MS);
    }
    const ms = Math.round(performance.now() - started);
    const fields = { ...total, batches, ms, before: before.toISOString() };
    if (total.jobs > 0) logger.info(fields, 'history clean-up deleted finished jobs');
    else logger.debug(fields, 'history clean-up found nothing to delete');
    if (total.jobs > 0) this.options.onDeleted?.(total);
    return total;
  }

  private pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.wakePause = undefined;
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.wakePause = done;
    });
  }
}

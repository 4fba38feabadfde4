import type { Logger } from 'pino';
import { isDataError } from '../errors.js';
import type { Committed, JobChange, JobColumns, TransitionRecord } from './sql.js';

/** A change lost a race: the row moved on since this instance read it. */
export class VersionConflictError extends Error {
  override readonly name = 'VersionConflictError';
  constructor(readonly jobId: string) {
    super(`job ${jobId} was changed elsewhere; its live actor is out of date`);
  }
}

/** The writer's view of one job's row version, shared with whoever owns the job. */
export interface VersionRef {
  version: number;
}

interface Pending {
  ref: VersionRef;
  columns: JobColumns;
  transitions: TransitionRecord[];
  waiters: Waiter[];
}

interface Waiter {
  resolve: (transitionIds: string[]) => void;
  reject: (err: Error) => void;
  /** How many of the entry's transitions are this write's. */
  transitions: number;
}

export interface GroupCommitOptions {
  /** How long the first change waits for others to share its statement, in ms. */
  windowMs: number;
  /** Rows per statement; more wait for the next. */
  maxBatch?: number;
  write: (changes: JobChange[]) => Promise<Map<string, Committed>>;
  logger: Logger;
  /** Told of each committed batch: its size and how long the statement took. */
  onBatch?: (size: number, ms: number) => void;
}

const RETRY_FIRST_MS = 100;
const RETRY_MAX_MS = 5000;

/**
 * Group commit: changes of many jobs made within one short window go to the
 * database in one set-based statement. Several changes of one job in a window
 * merge (the last snapshot wins, every transition is kept). A promise per
 * change resolves once it is durable, so effects (publish, broker ack) wait for
 * it. A failed statement is retried with backoff, never dropped: the actors
 * are ahead of the database until it succeeds.
 */
export class GroupCommit {
  private pending = new Map<string, Pending>();
  private timer: NodeJS.Timeout | undefined;
  private flushing: Promise<void> | undefined;
  private retryMs = RETRY_FIRST_MS;
  private abandonedWith: Error | undefined;
  private readonly maxBatch: number;

  constructor(private readonly options: GroupCommitOptions) {
    this.maxBatch = options.maxBatch ?? 1000;
  }

  /** Queues a change of one job; resolves with its transitions' ids when it is committed. */
  write(
    jobId: string,
    ref: VersionRef,
    columns: JobColumns,
    transitions: TransitionRecord[],
  ): Promise<string[]> {
    return new Promise((resolve, reject) => {
      const waiter: Waiter = { resolve, reject, transitions: transitions.length };
      const existing = this.pending.get(jobId);
      if (existing && existing.ref !== ref) {
        // Two owners wrote the same job at once (two actors, or a retry racing
        // another): only the first may win, as the version check would decide.
        reject(new VersionConflictError(jobId));
        return;
      }
      if (existing) {
        existing.columns = columns;
        existing.transitions.push(...transitions);
        existing.waiters.push(waiter);
      } else {
        this.pending.set(jobId, {
          ref,
          columns,
          transitions: [...transitions],
          waiters: [waiter],
        });
      }
      this.schedule(this.options.windowMs);
    });
  }

  /** Changes not yet committed. */
  get backlog(): number {
    return this.pending.size;
  }

  /** Commits everything queued now, and waits for it. */
  async drain(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    while (this.flushing || this.pending.size > 0) {
      if (this.flushing) {
        await this.flushing;
        continue;
      }
      await this.flush();
      if (this.pending.size > 0 && this.retryMs > RETRY_FIRST_MS) {
        await new Promise((resolve) => setTimeout(resolve, this.retryMs));
      }
    }
  }

  /** Stops retrying; whatever is still queued is rejected. */
  abandon(reason: Error): void {
    this.abandonedWith = reason;
    clearTimeout(this.timer);
    this.timer = undefined;
    for (const p of this.pending.values()) for (const w of p.waiters) w.reject(reason);
    this.pending.clear();
  }

  private schedule(delayMs: number): void {
    if (this.abandonedWith) {
      this.abandon(this.abandonedWith);
      return;
    }
    if (this.timer || this.flushing) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.flush();
    }, delayMs);
  }

  private flush(): Promise<void> {
    if (this.flushing) return this.flushing;
    const batch = new Map<string, Pending>();
    for (const [id, p] of this.pending) {
      if (batch.size >= this.maxBatch) break;
      batch.set(id, p);
      this.pending.delete(id);
    }
    this.flushing = this.commit(batch).finally(() => {
      this.flushing = undefined;
      if (this.pending.size > 0) this.schedule(this.timerDelay());
    });
    return this.flushing;
  }

  private timerDelay(): number {
    return this.retryMs > RETRY_FIRST_MS ? this.retryMs : 0;
  }

  private async commit(batch: Map<string, Pending>): Promise<void> {
    if (batch.size === 0) return;
    const changes: JobChange[] = [...batch].map(([id, p]) => ({
      id,
      version: p.ref.version,
      columns: p.columns,
      transitions: p.transitions,
    }));
    const started = performance.now();
    let written: Map<string, Committed>;
    try {
      written = await this.options.write(changes);
    } catch (err) {
      if (isDataError(err)) {
        await this.isolate(batch, err as Error);
        return;
      }
      this.requeue(batch);
      this.options.logger.error(
        { err, jobs: batch.size, retryInMs: this.retryMs },
        'group commit failed; retrying',
      );
      this.retryMs = Math.min(this.retryMs * 2, RETRY_MAX_MS);
      return;
    }
    this.retryMs = RETRY_FIRST_MS;
    this.options.onBatch?.(batch.size, performance.now() - started);

    for (const [id, p] of batch) {
      const row = written.get(id);
      if (row === undefined) {
        const conflict = new VersionConflictError(id);
        for (const w of p.waiters) w.reject(conflict);
        continue;
      }
      p.ref.version = row.version;
      let offset = 0;
      for (const w of p.waiters) {
        w.resolve(row.transitionIds.slice(offset, offset + w.transitions));
        offset += w.transitions;
      }
    }
  }

  /**
   * A row the database refuses (a data error) would fail every retry of its
   * batch and hold up every other job: write the rows one by one, and fail
   * only the writes of the row at fault.
   */
  private async isolate(batch: Map<string, Pending>, err: Error): Promise<void> {
    if (batch.size === 1) {
      const [[id, pending]] = [...batch] as [[string, Pending]];
      this.options.logger.error({ err, job_id: id }, 'the database refused a job change');
      for (const w of pending.waiters) w.reject(err);
      return;
    }
    for (const entry of batch) await this.commit(new Map([entry]));
  }

  /** Puts a failed batch back in front of anything queued meanwhile for the same jobs. */
  private requeue(batch: Map<string, Pending>): void {
    const later = this.pending;
    this.pending = new Map(batch);
    for (const [id, p] of later) {
      const earlier = this.pending.get(id);
      if (earlier && earlier.ref !== p.ref) {
        for (const w of p.waiters) w.reject(new VersionConflictError(id));
      } else if (earlier) {
        earlier.columns = p.columns;
        earlier.transitions.push(...p.transitions);
        earlier.waiters.push(...p.waiters);
      } else {
        this.pending.set(id, p);
      }
    }
  }
}

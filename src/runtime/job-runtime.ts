import { map } from 'rxjs';
import {
  createActor,
  fromEventObservable,
  initialTransition,
  type Actor,
  type InspectionEvent,
} from 'xstate';
import type { Logger } from 'pino';
import {
  isFinal,
  JOB_MACHINE_VERSION,
  jobMachine,
  nextWakeAt,
  type JobContext,
  type JobEvent,
  type JobInput,
  type JobSnapshot,
  type JobState,
  type WaitInput,
} from '../../machines/job.machine.js';
import { migrateSnapshot } from '../../machines/snapshot-migrations.js';
import { timerAt } from '../time/timer.js';
import { GroupCommit, VersionConflictError, type VersionRef } from '../store/group-commit.js';
import {
  clearUnrestorable,
  findDispatched,
  findJob,
  findWaking,
  insertJob,
  markUnrestorable,
  type JobRow,
  type TransitionRecord,
} from '../store/sql.js';
import type pg from 'pg';
import { columnsOf, executeBody, executeRoutingKey, messageId } from './job-columns.js';
import type { SchedulerEventBus } from '../events.js';
import { TransientError } from '../errors.js';

type LiveActor = Actor<typeof jobMachine>;
type TimerEvent = Extract<JobEvent, { type: 'due' | 'deadline.passed' | 'backoff.elapsed' }>;

/** Publishes one `jobs.execute` message; resolves on the broker's confirm. */
export type PublishExecute = (
  routingKey: string,
  body: Buffer,
  properties: { messageId: string; correlationId: string; type: string; timestamp: number },
) => Promise<void>;

export interface RuntimeOptions {
  pool: pg.Pool;
  schema: string;
  writer: GroupCommit;
  publish: PublishExecute;
  logger: Logger;
  horizonMs: number;
  /** Clock in epoch ms; default `Date.now`. */
  now?: () => number;
  /** Draws jitter in [0, 1); default `Math.random`. */
  random?: () => number;
  /** Where transitions, dispatches and replies are reported. */
  events?: SchedulerEventBus;
}

interface LiveJob {
  id: string;
  jobType: string;
  actor: LiveActor;
  ref: VersionRef;
  last: JobSnapshot;
  /** Resolves when the latest change is committed. */
  lastWrite: Promise<unknown>;
  /** The instant the attempt being dispatched was due, for the dispatch lag. */
  dueAt?: number;
  stopped: boolean;
}

/** What became of a reply or command aimed at one job. */
export type Outcome =
  | { kind: 'applied'; state: JobState }
  | { kind: 'ignored'; state: JobState; reason: string }
  | { kind: 'unknown' };

/** Batch size of restore and horizon reads. */
const LOAD_PAGE = 1000;

/**
 * Owns the live job actors: creates and restores them, persists every change
 * through the group commit before its effect, publishes dispatched attempts,
 * and routes replies and commands to them. Jobs due beyond the horizon stay in
 * the database until the horizon reaches them.
 */
export class JobRuntime {
  private readonly live = new Map<string, LiveJob>();
  private readonly activating = new Map<string, Promise<LiveJob | null>>();
  private readonly machine;
  private readonly now: () => number;
  private readonly random: () => number;
  private loadedUntil: number | null = null;
  private horizonTimer: NodeJS.Timeout | undefined;
  private loading: Promise<unknown> | undefined;
  private stopping = false;

  constructor(private readonly options: RuntimeOptions) {
    this.now = options.now ?? Date.now;
    this.random = options.random ?? Math.random;
    const now = this.now;
    const random = this.random;
    this.machine = jobMachine.provide({
      actors: {
        wait: fromEventObservable<TimerEvent, WaitInput>(({ input }) =>
          timerAt(input.at, { now }).pipe(
            map((at) => ({ type: input.event, at, jitter: random() }) as TimerEvent),
          ),
        ),
      },
    });
  }

  /** Live actors, for the inspector and metrics. */
  get size(): number {
    return this.live.size;
  }

  liveSnapshots(): JobSnapshot[] {
    return [...this.live.values()].map((job) => job.actor.getSnapshot());
  }

  /** The live actor's snapshot of one job; undefined when it has no actor here. */
  liveSnapshot(jobId: string): JobSnapshot | undefined {
    return this.live.get(jobId)?.actor.getSnapshot();
  }

  /** The end of the horizon: jobs waking up before it live as actors. */
  horizonEnd(): number {
    return this.now() + this.options.horizonMs;
  }

  /** Restores every waiting job within the horizon, then keeps the horizon moving. */
  async start(): Promise<number> {
    // A job marked unrestorable by an earlier release may restore now.
    await clearUnrestorable(this.options.pool, this.options.schema);
    const restored = (await this.loadDispatched()) + (await this.loadHorizon());
    const every = Math.max(1000, Math.min(this.options.horizonMs / 4, 60_000));
    const tick = () => {
      this.horizonTimer = setTimeout(() => {
        this.loading = this.loadHorizon()
          .catch((err: unknown) => this.options.logger.error({ err }, 'horizon load failed'))
          .finally(() => {
            this.loading = undefined;
            if (!this.stopping) tick();
          });
      }, every);
    };
    tick();
    return restored;
  }

  /** Restores the jobs whose attempt was recorded but not confirmed: they publish again. */
  private async loadDispatched(): Promise<number> {
    let count = 0;
    let after: string | null = null;
    for (;;) {
      const rows = await findDispatched(this.options.pool, this.options.schema, after, LOAD_PAGE);
      count += await this.adoptAll(rows);
      if (rows.length < LOAD_PAGE) return count;
      after = rows.at(-1)?.id ?? null;
    }
  }

  /**
   * Activates the jobs whose instant the horizon has reached since the last
   * load, a page at a time in (`next_at`, `id`) order; the window moves on only
   * once the whole of it was read.
   */
  private async loadHorizon(): Promise<number> {
    const window = { after: this.loadedUntil, until: this.horizonEnd() };
    let count = 0;
    let from: { at: string; id: string } | null = null;
    for (;;) {
      const rows = await findWaking(
        this.options.pool,
        this.options.schema,
        window,
        from,
        LOAD_PAGE,
      );
      count += await this.adoptAll(rows);
      const last = rows.at(-1);
      if (rows.length < LOAD_PAGE || !last?.next_at) break;
      from = { at: last.next_at, id: last.id };
    }
    this.loadedUntil = window.until;
    return count;
  }

  private async adoptAll(rows: JobRow[]): Promise<number> {
    let count = 0;
    for (const row of rows) {
      if (this.stopping) break;
      if (this.live.has(row.id) || this.activating.has(row.id)) continue;
      if ((await this.adopt(row)) !== null) count += 1;
    }
    return count;
  }

  /** Creates a job: inserts its row, and makes it live when it is due within the horizon. */
  async create(
    input: JobInput,
    extra: { idempotencyKey: string | null; event: string },
  ): Promise<JobRow | null> {
    const [snapshot] = initialTransition(this.machine, input);
    const row = await insertJob(this.options.pool, this.options.schema, {
      id: input.jobId,
      jobType: input.jobType,
      idempotencyKey: extra.idempotencyKey,
      subject: input.subject,
      columns: columnsOf(snapshot),
      event: extra.event,
      at: this.now(),
    });
    if (!row) return null;
    this.options.events?.emit('transition', {
      id: String(row.transition_id),
      jobId: row.id,
      jobType: row.job_type,
      from: null,
      to: row.state,
      event: extra.event,
      attempt: row.attempt,
      at: Date.parse(row.created_at),
      detail: null,
    });
    if (snapshot.context.dueAt <= this.horizonEnd() && !this.stopping) {
      this.spawn(row.id, row.job_type, { version: row.version }, { input });
    }
    return row;
  }

  /** Sends an event to a job, live or only persisted, and waits until its effect is durable. */
  async send(jobId: string, event: JobEvent): Promise<Outcome> {
    const job = this.live.get(jobId) ?? (await this.activate(jobId));
    if (!job) {
      if (this.stopping)
        throw new TransientError('shutting down; the message goes back to its queue');
      const row = await findJob(this.options.pool, this.options.schema, jobId);
      if (!row) return { kind: 'unknown' };
      return { kind: 'ignored', state: row.state as JobState, reason: this.whyNotLive(row) };
    }
    const before = job.actor.getSnapshot();
    job.actor.send(event);
    const after = job.actor.getSnapshot();
    if (after === before) {
      this.releaseIfFar(job);
      return {
        kind: 'ignored',
        state: before.value as JobState,
        reason: ignoredReason(before, event),
      };
    }
    await job.lastWrite;
    if (event.type === 'jobs.completed' || event.type === 'jobs.failed') {
      const sentAt = before.context.sentAt;
      this.options.events?.emit('replied', {
        jobType: job.jobType,
        reply: event.type,
        latencyMs: sentAt === null ? null : event.at - sentAt,
      });
    }
    this.releaseIfFar(job);
    return { kind: 'applied', state: after.value as JobState };
  }

  /**
   * Starts a dead job again as a new actor (a final state has no way out): the
   * row gets the new actor's snapshot under the version check, with a
   * `dead → pending` transition, and the actor goes live. Returns the job's
   * state afterwards: `pending`, or the state that kept it from a retry.
   */
  async retry(
    jobId: string,
    at: number,
    makeInput: (context: JobContext) => JobInput,
  ): Promise<JobState | 'unknown'> {
    const row = await findJob(this.options.pool, this.options.schema, jobId);
    if (!row) return 'unknown';
    if (row.state !== 'dead' || this.live.has(jobId)) return row.state as JobState;
    const previous = migrateSnapshot(row.snapshot, row.machine_version) as { context: JobContext };
    const input = makeInput(previous.context);
    const [snapshot] = initialTransition(this.machine, input);
    const ref: VersionRef = { version: row.version };
    const record: TransitionRecord = {
      from: 'dead',
      to: 'pending',
      event: 'retry',
      attempt: input.attemptsBefore ?? 0,
      at,
      detail: { attempt_limit: snapshot.context.attemptLimit },
    };
    const [transitionId] = await this.options.writer.write(jobId, ref, columnsOf(snapshot), [
      record,
    ]);
    this.options.events?.emit('transition', {
      id: transitionId ?? '',
      jobId,
      jobType: row.job_type,
      ...record,
    });
    if (snapshot.context.dueAt <= this.horizonEnd() && !this.stopping) {
      this.spawn(jobId, row.job_type, ref, { input });
    }
    return 'pending';
  }

  private whyNotLive(row: JobRow): string {
    if (row.restore_error) return `job cannot be restored: ${row.restore_error}`;
    return `job is already ${row.state}`;
  }

  /** Loads a job that is not live and makes it live, unless it is finished or broken. */
  private activate(jobId: string): Promise<LiveJob | null> {
    const running = this.activating.get(jobId);
    if (running) return running;
    const activation = (async () => {
      const row = await findJob(this.options.pool, this.options.schema, jobId);
      if (!row || isFinal(row.state as JobState) || row.restore_error) return null;
      return this.live.get(jobId) ?? (await this.adopt(row));
    })().finally(() => this.activating.delete(jobId));
    this.activating.set(jobId, activation);
    return activation;
  }

  /** Restores a persisted job as a live actor; a snapshot it cannot restore marks that job. */
  private async adopt(row: JobRow): Promise<LiveJob | null> {
    if (this.stopping) return null;
    if (row.machine_version > JOB_MACHINE_VERSION) {
      // Made by a newer release (a rolling deploy or a rollback): leave it to
      // that release rather than marking it for good.
      this.options.logger.warn(
        { job_id: row.id, machine_version: row.machine_version },
        'job was written by a newer job machine; left for that release',
      );
      return null;
    }
    try {
      const snapshot = migrateSnapshot(row.snapshot, row.machine_version);
      const job = this.spawn(row.id, row.job_type, { version: row.version }, { snapshot });
      if (job.last.value === 'dispatched') this.publishAttempt(job);
      return job;
    } catch (err) {
      const reason = (err as Error).message;
      this.options.logger.error(
        { err, job_id: row.id, job_type: row.job_type },
        'job cannot be restored; marked and left as it is',
      );
      await markUnrestorable(this.options.pool, this.options.schema, row.id, reason);
      return null;
    }
  }

  private spawn(
    id: string,
    jobType: string,
    ref: VersionRef,
    from: { input: JobInput } | { snapshot: unknown },
  ): LiveJob {
    // One actor per job: a second would run the job twice.
    const existing = this.live.get(id);
    if (existing) return existing;
    let job: LiveJob | undefined;
    const actor = createActor(this.machine, {
      ...from,
      inspect: (event: InspectionEvent) => {
        if (job && event.type === '@xstate.snapshot' && event.actorRef === job.actor) {
          this.onSnapshot(job, event.snapshot as JobSnapshot, event.event as JobEvent);
        }
      },
    } as never) as LiveActor;
    job = {
      id,
      jobType,
      actor,
      ref,
      last: actor.getSnapshot(),
      lastWrite: Promise.resolve(),
      stopped: false,
    };
    const created = job;
    actor.subscribe({
      error: (err) => this.log(created).error({ err }, 'job actor failed'),
    });
    this.live.set(id, job);
    actor.start();
    return job;
  }

  /**
   * The job's logger, with `job_id`, `job_type` and the current `attempt` bound;
   * made when a line is written, not per transition.
   */
  private log(job: LiveJob): Logger {
    return this.options.logger.child({
      job_id: job.id,
      job_type: job.jobType,
      attempt: job.actor.getSnapshot().context.attempt,
    });
  }

  private onSnapshot(job: LiveJob, snapshot: JobSnapshot, event: JobEvent): void {
    if (job.stopped || snapshot === job.last) return;
    try {
      this.record(job, snapshot, event);
    } catch (err) {
      // A change that cannot be recorded must not leave the actor ahead of the
      // database: drop the actor and take the job again from its row.
      this.log(job).error({ err, event: event.type }, 'cannot record a job change; reloading');
      this.forget(job);
      void this.activate(job.id).catch(() => {});
    }
  }

  private record(job: LiveJob, snapshot: JobSnapshot, event: JobEvent): void {
    const from = job.last.value as JobState;
    const to = snapshot.value as JobState;
    if (to === 'dispatched') job.dueAt = nextWakeAt(from, job.last.context) ?? undefined;
    job.last = snapshot;
    const context = snapshot.context;
    const record: TransitionRecord = {
      from,
      to,
      event: event.type,
      attempt: context.attempt,
      at: 'at' in event ? event.at : this.now(),
      detail: transitionDetail(snapshot, event),
    };
    if (this.options.logger.isLevelEnabled('debug')) {
      this.log(job).debug({ from, to, event: event.type }, 'transition');
    }

    const write = this.options.writer.write(job.id, job.ref, columnsOf(snapshot), [record]);
    job.lastWrite = write;
    write.then(
      ([transitionId]) => this.afterCommit(job, snapshot, record, transitionId),
      (err: unknown) => this.onWriteFailed(job, err),
    );
  }

  private afterCommit(
    job: LiveJob,
    snapshot: JobSnapshot,
    record: TransitionRecord,
    transitionId: string | undefined,
  ): void {
    this.options.events?.emit('transition', {
      id: transitionId ?? '',
      jobId: job.id,
      jobType: job.jobType,
      ...record,
    });
    if (record.to === 'dispatched' && job.actor.getSnapshot() === snapshot) {
      this.publishAttempt(job);
    }
    if (isFinal(record.to as JobState)) {
      const context = snapshot.context;
      this.log(job).info(
        {
          state: record.to,
          attempts: context.attempt,
          duration_ms: (context.finishedAt ?? this.now()) - context.scheduledFor,
          ...(context.lastError && { last_error: context.lastError }),
        },
        'job finished',
      );
      this.forget(job);
    }
  }

  private onWriteFailed(job: LiveJob, err: unknown): void {
    if (this.stopping) return; // shutdown abandoned it
    if (err instanceof VersionConflictError) {
      this.log(job).warn('job changed elsewhere; reloading it from the database');
    } else {
      this.log(job).error({ err }, 'job change not written; reloading it from the database');
    }
    this.forget(job);
    void this.activate(job.id).catch((e: unknown) =>
      this.log(job).error({ err: e }, 'reloading job failed'),
    );
  }

  /**
   * Publishes the current attempt of a dispatched job (the relay of its outbox
   * entry): the attempt is already durable. The confirm or the failure goes
   * back to the actor as an event; a failure spends no attempt.
   */
  private publishAttempt(job: LiveJob): void {
    const snapshot = job.actor.getSnapshot();
    const context = snapshot.context;
    const now = this.now();
    if (context.expiresAt !== null && now > context.expiresAt) {
      // Restored after downtime across the cutoff: too late to send.
      job.actor.send({ type: 'expire', at: now });
      return;
    }
    const attempt = context.attempt;
    const dueAt = job.dueAt;
    const sentAt = this.now();
    const body = Buffer.from(JSON.stringify(executeBody(context, sentAt)));
    const stillWaiting = () => {
      const current = job.actor.getSnapshot();
      return !job.stopped && current.value === 'dispatched' && current.context.attempt === attempt;
    };
    this.options
      .publish(executeRoutingKey(context.jobType), body, {
        messageId: messageId(context.jobId, attempt),
        correlationId: context.jobId,
        type: 'jobs.execute',
        timestamp: Math.floor(sentAt / 1000),
      })
      .then(
        () => {
          // Counted even when the reply beat the confirm: the attempt went out.
          if (dueAt !== undefined) {
            const lagMs = this.now() - dueAt;
            this.options.events?.emit('dispatched', { jobType: job.jobType, lagMs });
          }
          if (!stillWaiting()) return;
          job.actor.send({ type: 'publish.confirmed', at: this.now(), sentAt });
        },
        (err: Error) => {
          this.log(job).warn({ err }, 'publish failed; the attempt will be published again');
          if (!stillWaiting()) return;
          job.actor.send({
            type: 'publish.failed',
            at: this.now(),
            error: err.message,
            jitter: this.random(),
          });
        },
      );
  }

  /** Stops a live job that now waits beyond the horizon; the database keeps it. */
  private releaseIfFar(job: LiveJob): void {
    const snapshot = job.actor.getSnapshot();
    const wake = columnsOf(snapshot).nextAt;
    if (snapshot.value === 'pending' && wake !== null && wake > this.horizonEnd()) {
      void job.lastWrite.then(
        () => this.forget(job),
        () => {},
      );
    }
  }

  private forget(job: LiveJob): void {
    job.stopped = true;
    job.actor.stop();
    if (this.live.get(job.id) === job) this.live.delete(job.id);
  }

  /** Stops timers and actors; changes already made are left to the writer to commit. */
  async stop(): Promise<void> {
    this.stopping = true;
    clearTimeout(this.horizonTimer);
    await Promise.allSettled([this.loading, ...this.activating.values()]);
    for (const job of [...this.live.values()]) this.forget(job);
  }
}

function transitionDetail(snapshot: JobSnapshot, event: JobEvent): Record<string, unknown> | null {
  const c = snapshot.context;
  switch (event.type) {
    case 'publish.confirmed':
      return {
        sent_at: new Date(event.sentAt).toISOString(),
        message_id: messageId(c.jobId, c.attempt),
      };
    case 'publish.failed':
      return { error: event.error };
    case 'jobs.failed':
      return {
        error: event.errorMessage,
        should_retry: event.shouldRetry,
        reply_attempt: event.attempt ?? null,
      };
    case 'jobs.completed':
      return { reply_attempt: event.attempt ?? null };
    case 'deadline.passed':
      return { error: c.lastError };
    case 'reschedule':
      return { due_at: new Date(event.dueAt).toISOString() };
    default:
      break;
  }
  if (snapshot.value === 'dead') return { error: c.lastError, reason: c.deadReason };
  if (snapshot.value === 'retrying')
    return { retry_at: c.retryAt && new Date(c.retryAt).toISOString() };
  return null;
}

/** Why an event changed nothing, for the warning that reports it. */
function ignoredReason(snapshot: JobSnapshot, event: JobEvent): string {
  const state = snapshot.value as JobState;
  const attempt = snapshot.context.attempt;
  if (isFinal(state)) return `job is already ${state}`;
  if ('attempt' in event && event.attempt !== undefined && event.attempt > attempt) {
    return `reply for attempt ${event.attempt}, but only ${attempt} sent`;
  }
  if (event.type === 'jobs.failed') {
    const failed = event.attempt ?? '?';
    return `failure of attempt ${failed} while the job is ${state} at attempt ${attempt}`;
  }
  return `${event.type} does not apply to a ${state} job`;
}

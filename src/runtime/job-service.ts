import { randomUUID } from 'node:crypto';
import type { MikroORM } from '@mikro-orm/postgresql';
import type pg from 'pg';
import type { Config } from '../../config/env.js';
import { categoryDefaults, type JobType } from '../../config/job-types.js';
import { CANCELLABLE_STATES, type JobInput, type JobState } from '../../machines/job.machine.js';
import { InvalidMessageError, type ScheduleCommand } from '../broker/messages.js';
import { JobEntity, type Job } from '../store/entities.js';
import { findByIdOrKey, findSubjectJobs, type JobRow } from '../store/sql.js';
import type { JobRuntime } from './job-runtime.js';

/**
 * A valid request that cannot be done: not found, a state that does not allow
 * it, a conflict. Answered `ok: false` (HTTP 404/409), never dead-lettered.
 */
export class RequestRefused extends Error {
  override readonly name = 'RequestRefused';
  constructor(
    readonly code: 'not_found' | 'conflict' | 'invalid_state',
    message: string,
  ) {
    super(message);
  }
}

export interface Scheduled {
  jobId: string;
  state: JobState;
  duplicate: boolean;
}

/** The job view of PROTOCOL.md, snake_case and named as on the wire. */
export function jobView(job: Job) {
  const iso = (d: Date | null | undefined) => (d ? new Date(d).toISOString() : null);
  return {
    job_id: job.id,
    job_type: job.jobType,
    state: job.state,
    attempt: job.attempt,
    max_attempts: job.maxAttempts,
    scheduled_for: iso(job.scheduledFor),
    next_at: iso(job.nextAt),
    expires_at: iso(job.expiresAt),
    subject: job.subject ?? null,
    last_error: job.lastError ?? null,
    result: job.result ?? null,
    metadata: job.metadata,
    created_at: iso(job.createdAt),
    updated_at: iso(job.updatedAt),
    finished_at: iso(job.finishedAt),
  };
}
export type JobView = ReturnType<typeof jobView>;

/** What the edges (commands, HTTP, periodic schedules) ask of jobs. */
export class JobService {
  constructor(
    private readonly runtime: JobRuntime,
    private readonly orm: MikroORM,
    private readonly pool: pg.Pool,
    private readonly config: Config,
    private readonly schema: string,
    private readonly now: () => number = Date.now,
  ) {}

  /**
   * Creates a job, or returns the one that already holds its `job_id` or
   * `idempotency_key` (`duplicate: true`). The unique constraints decide, so
   * two identical commands racing create one job.
   */
  async schedule(command: ScheduleCommand, event = 'jobs.schedule'): Promise<Scheduled> {
    const now = this.now();
    const scheduledFor = resolveTiming(command, now);
    if (command.expiresAt !== undefined) {
      if (command.expiresAt <= now) {
        throw new InvalidMessageError('expires_at: is in the past', 'expires_at');
      }
      if (command.expiresAt < scheduledFor) {
        throw new InvalidMessageError('expires_at: is before the job is due', 'expires_at');
      }
    }

    const defaults = categoryDefaults(this.config, command.jobType);
    const defaultCutoff = defaults.expiresAfterSeconds;
    const input: JobInput = {
      jobId: command.jobId ?? randomUUID(),
      jobType: command.jobType,
      scheduledFor,
      expiresAt:
        command.expiresAt ??
        (defaultCutoff === undefined ? null : scheduledFor + defaultCutoff * 1000),
      timeoutSeconds: command.timeoutSeconds ?? defaults.timeoutSeconds,
      maxAttempts: command.maxAttempts ?? defaults.maxAttempts,
      minRetryDelayMs: Math.round(
        (command.minRetryDelaySeconds ?? defaults.minRetryDelaySeconds) * 1000,
      ),
      maxRetryDelayMs: this.config.jobs.maxRetryDelayMs,
      publishRetryDelayMs: this.config.jobs.publishRetryDelayMs,
      metadata: command.metadata,
      subject: command.subject ?? null,
      anchor:
        command.timing.kind === 'anchor'
          ? { anchorAt: command.timing.anchorAt, offsetSeconds: command.timing.offsetSeconds }
          : null,
    };

    const row = await this.runtime.create(input, {
      idempotencyKey: command.idempotencyKey ?? null,
      event,
    });
    if (row) return { jobId: row.id, state: row.state as JobState, duplicate: false };
    return this.existing(command);
  }

  private async existing(command: ScheduleCommand): Promise<Scheduled> {
    const rows = await findByIdOrKey(
      this.pool,
      this.schema,
      command.jobId ?? null,
      command.idempotencyKey ?? null,
    );
    const byKey = rows.find((r) => r.idempotency_key === command.idempotencyKey);
    const byId = rows.find((r) => r.id === command.jobId);
    if (byKey && byId && byKey.id !== byId.id) {
      throw new RequestRefused(
        'conflict',
        `idempotency_key names job ${byKey.id} but job_id names job ${byId.id}`,
      );
    }
    const row: JobRow | undefined = byKey ?? byId;
    if (!row) {
      // The conflicting row went between the insert and this read (history retention).
      throw new RequestRefused('conflict', 'job_id or idempotency_key is taken; try again');
    }
    return { jobId: row.id, state: row.state as JobState, duplicate: true };
  }

  /** Cancels a waiting job; a cancelled one again is fine, a finished one is refused. */
  async cancel(jobId: string): Promise<JobState> {
    const outcome = await this.runtime.send(jobId, { type: 'cancel', at: this.now() });
    if (outcome.kind === 'unknown') throw new RequestRefused('not_found', `job ${jobId} not found`);
    if (outcome.kind === 'applied' || outcome.state === 'cancelled') return 'cancelled';
    throw new RequestRefused('invalid_state', `job ${jobId} is ${outcome.state}; cannot cancel`);
  }

  /** Moves the wait of a pending or retrying job to `dueAt`. */
  async reschedule(jobId: string, dueAt: number): Promise<JobState> {
    const outcome = await this.runtime.send(jobId, { type: 'reschedule', at: this.now(), dueAt });
    if (outcome.kind === 'unknown') throw new RequestRefused('not_found', `job ${jobId} not found`);
    if (outcome.kind === 'applied') return outcome.state;
    throw new RequestRefused(
      'invalid_state',
      `job ${jobId} is ${outcome.state}; only pending or retrying jobs can be rescheduled`,
    );
  }

  async get(jobId: string): Promise<JobView | null> {
    const job = await this.orm.em.fork().findOne(JobEntity, { id: jobId });
    return job ? jobView(job) : null;
  }

  /** The view of a job that must exist (after a change to it). */
  async view(jobId: string): Promise<JobView> {
    const view = await this.get(jobId);
    if (!view) throw new RequestRefused('not_found', `job ${jobId} not found`);
    return view;
  }

  /** Cancels every waiting job of a subject; returns the ids it cancelled. */
  async cancelSubject(subject: string): Promise<string[]> {
    const jobs = await findSubjectJobs(this.pool, this.schema, subject, CANCELLABLE_STATES);
    const cancelled = await Promise.all(
      jobs.map(async ({ id }) => {
        const outcome = await this.runtime.send(id, { type: 'cancel', at: this.now() });
        return outcome.kind === 'applied' ? id : null;
      }),
    );
    return cancelled.filter((id): id is string => id !== null);
  }

  /**
   * Moves every pending job of a subject that was timed by anchor to the new
   * anchor, each by its own offset (its cutoff moves with it). Jobs in flight
   * keep going. Returns the ids it moved.
   */
  async rescheduleSubject(subject: string, anchorAt: number): Promise<string[]> {
    const jobs = await findSubjectJobs(this.pool, this.schema, subject, ['pending'], true);
    const moved = await Promise.all(
      jobs.map(async ({ id, offsetSeconds }) => {
        const dueAt = anchorAt + (offsetSeconds ?? 0) * 1000;
        const outcome = await this.runtime.send(id, { type: 'reschedule', at: this.now(), dueAt });
        return outcome.kind === 'applied' ? id : null;
      }),
    );
    return moved.filter((id): id is string => id !== null);
  }

  /**
   * Runs a dead job again now, with a fresh budget of attempts; attempts number
   * on. A job that died expired needs a new cutoff (or explicitly none).
   */
  async retry(
    jobId: string,
    options: { maxAttempts?: number; expiresAt?: number | null },
  ): Promise<JobState> {
    const now = this.now();
    const state = await this.runtime.retry(jobId, now, (context) => {
      if (context.deadReason === 'expired' && options.expiresAt === undefined) {
        throw new RequestRefused(
          'invalid_state',
          `job ${jobId} expired; give a new expires_at (or null for none) to retry it`,
        );
      }
      const expiresAt = options.expiresAt === undefined ? context.expiresAt : options.expiresAt;
      if (expiresAt !== null && expiresAt <= now) {
        if (options.expiresAt !== undefined) {
          throw new InvalidMessageError('expires_at: is in the past', 'expires_at');
        }
        throw new RequestRefused(
          'invalid_state',
          `job ${jobId}'s cutoff has passed; give a new expires_at (or null for none) to retry it`,
        );
      }
      const defaults = categoryDefaults(this.config, context.jobType as JobType);
      return {
        jobId: context.jobId,
        jobType: context.jobType,
        scheduledFor: context.scheduledFor,
        dueAt: now,
        expiresAt,
        timeoutSeconds: context.timeoutSeconds,
        maxAttempts: options.maxAttempts ?? defaults.maxAttempts,
        minRetryDelayMs: context.minRetryDelayMs,
        maxRetryDelayMs: context.maxRetryDelayMs,
        publishRetryDelayMs: context.publishRetryDelayMs,
        metadata: context.metadata,
        subject: context.subject,
        anchor: context.anchor,
        attemptsBefore: context.attempt,
      };
    });
    if (state === 'unknown') throw new RequestRefused('not_found', `job ${jobId} not found`);
    if (state !== 'pending') {
      throw new RequestRefused(
        'invalid_state',
        `job ${jobId} is ${state}; only a dead job can be retried`,
      );
    }
    return state;
  }

  /** A page of jobs, ordered by `scheduled_for` then `job_id`; `cursor` continues a listing. */
  async list(filter: {
    state?: string;
    jobType?: string;
    subject?: string;
    limit: number;
    cursor?: string;
  }): Promise<{ jobs: JobView[]; nextCursor: string | null }> {
    const where = {
      ...(filter.state && { state: filter.state }),
      ...(filter.jobType && { jobType: filter.jobType }),
      ...(filter.subject && { subject: filter.subject }),
    };
    const page = await this.orm.em.fork().findByCursor(JobEntity, {
      where,
      first: filter.limit,
      ...(filter.cursor && { after: filter.cursor }),
      orderBy: { scheduledFor: 'asc', id: 'asc' },
      includeCount: false,
    });
    return {
      jobs: page.items.map(jobView),
      nextCursor: page.hasNextPage ? page.endCursor : null,
    };
  }
}

/** When a command's job is due, in epoch ms. */
export function resolveTiming(command: ScheduleCommand, now: number): number {
  const timing = command.timing;
  switch (timing.kind) {
    case 'at':
      return timing.at;
    case 'delay':
      return now + Math.round(timing.seconds * 1000);
    case 'anchor':
      return timing.anchorAt + timing.offsetSeconds * 1000;
  }
}

import { assign, fromEventObservable, setup, type SnapshotFrom } from 'xstate';
import { NEVER } from 'rxjs';
import { backoffMs } from './backoff.js';

/**
 * Version of the machine's states and context. A persisted snapshot records the
 * version it was made with; one from another version goes through
 * `migrateSnapshot` before it is restored.
 */
export const JOB_MACHINE_VERSION = 1;

/** Every state of a job, the same strings in the machine, the `state` column and logs. */
export const JOB_STATES = [
  'pending',
  'dispatched',
  'awaiting-ack',
  'failed',
  'retrying',
  'succeeded',
  'dead',
  'cancelled',
] as const;
export type JobState = (typeof JOB_STATES)[number];

export const FINAL_STATES: readonly JobState[] = ['succeeded', 'dead', 'cancelled'];
export const CANCELLABLE_STATES: readonly JobState[] = [
  'pending',
  'dispatched',
  'awaiting-ack',
  'retrying',
];

/** Why a job ended as `dead`. */
export type DeadReason = 'expired' | 'attempts-exhausted' | 'retry-refused';

export const EXPIRED_ERROR = 'expired';

/** What a new job (or a manual retry of a dead one) starts from. Instants are epoch ms. */
export interface JobInput {
  jobId: string;
  jobType: string;
  scheduledFor: number;
  expiresAt: number | null;
  timeoutSeconds: number;
  /** Attempts this run may make. */
  maxAttempts: number;
  minRetryDelayMs: number;
  maxRetryDelayMs: number;
  /** First backoff after a failed publish, doubling up to `maxRetryDelayMs`. */
  publishRetryDelayMs: number;
  metadata: Record<string, unknown>;
  subject: string | null;
  anchor: { anchorAt: number; offsetSeconds: number } | null;
  /** Attempts already made by earlier runs of the same job (manual retry). */
  attemptsBefore?: number;
  /** When `pending` ends, if not at `scheduledFor` (a manual retry runs now). */
  dueAt?: number;
}

export interface JobContext {
  jobId: string;
  jobType: string;
  scheduledFor: number;
  /** The instant `pending` waits for. */
  dueAt: number;
  expiresAt: number | null;
  timeoutSeconds: number;
  /** The last attempt number this run may use (attempts before it plus its budget). */
  attemptLimit: number;
  /** Attempts made before this run's budget began. */
  attemptsBefore: number;
  minRetryDelayMs: number;
  maxRetryDelayMs: number;
  publishRetryDelayMs: number;
  metadata: Record<string, unknown>;
  subject: string | null;
  anchor: { anchorAt: number; offsetSeconds: number } | null;
  /** Number of the current (or last) attempt; 0 before the first. */
  attempt: number;
  /** When the current attempt was last published (confirmed). */
  sentAt: number | null;
  /** When the current attempt's reply wait ends. */
  deadlineAt: number | null;
  /** When `retrying` ends. */
  retryAt: number | null;
  /** `retrying` publishes the same attempt again (its publish failed). */
  republish: boolean;
  /** Failed publishes of the current attempt in a row. */
  publishFailures: number;
  /** The backend refused a retry (`should_retry: false`) on the last failure. */
  retryRefused: boolean;
  lastError: string | null;
  deadReason: DeadReason | null;
  result: unknown;
  finishedAt: number | null;
}

/** Events; `at` is when the runtime observed it, `jitter` a draw in [0, 1). */
export type JobEvent =
  | { type: 'due'; at: number; jitter: number }
  | { type: 'deadline.passed'; at: number; jitter: number }
  | { type: 'backoff.elapsed'; at: number; jitter: number }
  | { type: 'publish.confirmed'; at: number; sentAt: number }
  | { type: 'publish.failed'; at: number; error: string; jitter: number }
  | { type: 'jobs.completed'; at: number; attempt?: number; result: unknown }
  | {
      type: 'jobs.failed';
      at: number;
      attempt?: number;
      errorMessage: string;
      shouldRetry: boolean;
      jitter: number;
    }
  | { type: 'cancel'; at: number }
  /** The runtime is about to publish a dispatched attempt: end it if its cutoff passed. */
  | { type: 'expire'; at: number }
  | { type: 'reschedule'; at: number; dueAt: number };

type TimerEvent = Extract<JobEvent, { type: 'due' | 'deadline.passed' | 'backoff.elapsed' }>;

/** Input of the `wait` actor: emit one `event` at the instant `at` (epoch ms). */
export interface WaitInput {
  at: number;
  event: TimerEvent['type'];
}

type Completed = Extract<JobEvent, { type: 'jobs.completed' }>;
type Failed = Extract<JobEvent, { type: 'jobs.failed' }>;
type Rescheduled = Extract<JobEvent, { type: 'reschedule' }>;

/** A completion counts for any attempt already sent; one for a later attempt is stale. */
export function completionApplies(context: JobContext, event: Completed): boolean {
  return context.attempt > 0 && (event.attempt === undefined || event.attempt <= context.attempt);
}

/** A failure counts only for the attempt the job is waiting on. */
export function failureApplies(context: JobContext, event: Failed): boolean {
  return context.attempt > 0 && (event.attempt === undefined || event.attempt === context.attempt);
}

function retryDelay(context: JobContext, jitter: number): number {
  const failures = context.attempt - context.attemptsBefore;
  return backoffMs(failures, context.minRetryDelayMs, context.maxRetryDelayMs, jitter);
}

function republishAt(context: JobContext, event: { at: number; jitter: number }): number {
  const delay = backoffMs(
    context.publishFailures + 1,
    context.publishRetryDelayMs,
    context.maxRetryDelayMs,
    event.jitter,
  );
  return event.at + delay;
}

function pastCutoff(context: JobContext, instant: number): boolean {
  return context.expiresAt !== null && instant > context.expiresAt;
}

function shifted(instant: number | null, by: number): number | null {
  return instant === null ? null : instant + by;
}

/**
 * The job machine. Pure: it reads no clock and does no I/O. Waits come from the
 * `wait` actor, which the runtime provides as an RxJS timer at an absolute
 * instant; the default here never fires. Publishing is the runtime's: it
 * publishes a job it sees entering `dispatched` (after the snapshot is durable)
 * and reports back with `publish.confirmed` or `publish.failed`.
 */
export const jobMachine = setup({
  types: {
    context: {} as JobContext,
    events: {} as JobEvent,
    input: {} as JobInput,
  },
  actors: {
    wait: fromEventObservable<TimerEvent, WaitInput>(() => NEVER),
  },
  guards: {
    dueAfterCutoff: ({ context, event }) => pastCutoff(context, (event as { at: number }).at),
    republishing: ({ context }) => context.republish,
    completionApplies: ({ context, event }) => completionApplies(context, event as Completed),
    failureApplies: ({ context, event }) => failureApplies(context, event as Failed),
    retryRefused: ({ context }) => context.retryRefused,
    attemptsExhausted: ({ context }) => context.attempt >= context.attemptLimit,
    retryAfterCutoff: ({ context }) =>
      context.retryAt !== null && pastCutoff(context, context.retryAt),
    republishAfterCutoff: ({ context, event }) => {
      const failed = event as Extract<JobEvent, { type: 'publish.failed' }>;
      return pastCutoff(context, republishAt(context, failed));
    },
  },
  actions: {
    startAttempt: assign(({ context }) => ({
      attempt: context.attempt + 1,
      sentAt: null,
      deadlineAt: null,
      retryAt: null,
      republish: false,
      publishFailures: 0,
      retryRefused: false,
    })),
    recordPublish: assign(({ context, event }) => {
      const { sentAt } = event as Extract<JobEvent, { type: 'publish.confirmed' }>;
      return {
        sentAt,
        deadlineAt: sentAt + context.timeoutSeconds * 1000,
        publishFailures: 0,
        republish: false,
      };
    }),
    scheduleRepublish: assign(({ context, event }) => {
      const failed = event as Extract<JobEvent, { type: 'publish.failed' }>;
      return {
        retryAt: republishAt(context, failed),
        republish: true,
        publishFailures: context.publishFailures + 1,
        lastError: `publish failed: ${failed.error}`,
      };
    }),
    recordFailure: assign(({ context, event }) => {
      const failed = event as Failed;
      return {
        lastError: failed.errorMessage,
        retryRefused: !failed.shouldRetry,
        retryAt: failed.at + retryDelay(context, failed.jitter),
        deadlineAt: null,
      };
    }),
    recordTimeout: assign(({ context, event }) => {
      const passed = event as Extract<JobEvent, { type: 'deadline.passed' }>;
      return {
        lastError: `no reply within ${context.timeoutSeconds} s`,
        retryRefused: false,
        retryAt: passed.at + retryDelay(context, passed.jitter),
        deadlineAt: null,
      };
    }),
    recordSuccess: assign(({ event }) => {
      const completed = event as Completed;
      return {
        result: completed.result ?? null,
        finishedAt: completed.at,
        deadlineAt: null,
        retryAt: null,
      };
    }),
    markExpired: assign(({ event }) => ({
      lastError: EXPIRED_ERROR,
      deadReason: 'expired' as const,
      finishedAt: (event as { at: number }).at,
      retryAt: null,
      deadlineAt: null,
    })),
    markExhausted: assign(({ context, event }) => ({
      deadReason: context.retryRefused
        ? ('retry-refused' as const)
        : ('attempts-exhausted' as const),
      finishedAt: (event as { at: number }).at,
      retryAt: null,
    })),
    markCancelled: assign(({ event }) => ({
      finishedAt: (event as { at: number }).at,
      retryAt: null,
      deadlineAt: null,
    })),
    moveDue: assign(({ context, event }) => {
      const { dueAt } = event as Rescheduled;
      const shift = dueAt - context.dueAt;
      return {
        dueAt,
        scheduledFor: dueAt,
        expiresAt: shifted(context.expiresAt, shift),
        anchor: context.anchor && {
          anchorAt: context.anchor.anchorAt + shift,
          offsetSeconds: context.anchor.offsetSeconds,
        },
      };
    }),
    moveRetry: assign(({ context, event }) => {
      const { dueAt } = event as Rescheduled;
      const shift = dueAt - (context.retryAt ?? dueAt);
      return { retryAt: dueAt, expiresAt: shifted(context.expiresAt, shift) };
    }),
  },
}).createMachine({
  id: 'job',
  context: ({ input }) => ({
    jobId: input.jobId,
    jobType: input.jobType,
    scheduledFor: input.scheduledFor,
    dueAt: input.dueAt ?? input.scheduledFor,
    expiresAt: input.expiresAt,
    timeoutSeconds: input.timeoutSeconds,
    attemptLimit: (input.attemptsBefore ?? 0) + input.maxAttempts,
    attemptsBefore: input.attemptsBefore ?? 0,
    minRetryDelayMs: input.minRetryDelayMs,
    maxRetryDelayMs: input.maxRetryDelayMs,
    publishRetryDelayMs: input.publishRetryDelayMs,
    metadata: input.metadata,
    subject: input.subject,
    anchor: input.anchor,
    attempt: input.attemptsBefore ?? 0,
    sentAt: null,
    deadlineAt: null,
    retryAt: null,
    republish: false,
    publishFailures: 0,
    retryRefused: false,
    lastError: null,
    deadReason: null,
    result: null,
    finishedAt: null,
  }),
  initial: 'pending',
  states: {
    pending: {
      invoke: {
        id: 'dueTimer',
        src: 'wait',
        input: ({ context }) => ({ at: context.dueAt, event: 'due' }),
      },
      on: {
        due: [
          { guard: 'dueAfterCutoff', target: 'dead', actions: 'markExpired' },
          { target: 'dispatched', actions: 'startAttempt' },
        ],
        reschedule: { target: 'pending', reenter: true, actions: 'moveDue' },
        cancel: { target: 'cancelled', actions: 'markCancelled' },
      },
    },
    dispatched: {
      on: {
        'publish.confirmed': { target: 'awaiting-ack', actions: 'recordPublish' },
        'publish.failed': [
          { guard: 'republishAfterCutoff', target: 'dead', actions: 'markExpired' },
          { target: 'retrying', actions: 'scheduleRepublish' },
        ],
        'jobs.completed': {
          guard: 'completionApplies',
          target: 'succeeded',
          actions: 'recordSuccess',
        },
        'jobs.failed': { guard: 'failureApplies', target: 'failed', actions: 'recordFailure' },
        expire: { guard: 'dueAfterCutoff', target: 'dead', actions: 'markExpired' },
        cancel: { target: 'cancelled', actions: 'markCancelled' },
      },
    },
    'awaiting-ack': {
      invoke: {
        id: 'deadlineTimer',
        src: 'wait',
        input: ({ context }) => ({ at: context.deadlineAt ?? 0, event: 'deadline.passed' }),
      },
      on: {
        'jobs.completed': {
          guard: 'completionApplies',
          target: 'succeeded',
          actions: 'recordSuccess',
        },
        'jobs.failed': { guard: 'failureApplies', target: 'failed', actions: 'recordFailure' },
        'deadline.passed': { target: 'failed', actions: 'recordTimeout' },
        cancel: { target: 'cancelled', actions: 'markCancelled' },
      },
    },
    failed: {
      always: [
        { guard: 'retryRefused', target: 'dead', actions: 'markExhausted' },
        { guard: 'attemptsExhausted', target: 'dead', actions: 'markExhausted' },
        { guard: 'retryAfterCutoff', target: 'dead', actions: 'markExpired' },
        { target: 'retrying' },
      ],
    },
    retrying: {
      invoke: {
        id: 'backoffTimer',
        src: 'wait',
        input: ({ context }) => ({ at: context.retryAt ?? 0, event: 'backoff.elapsed' }),
      },
      on: {
        'backoff.elapsed': [
          { guard: 'dueAfterCutoff', target: 'dead', actions: 'markExpired' },
          { guard: 'republishing', target: 'dispatched' },
          { target: 'dispatched', actions: 'startAttempt' },
        ],
        'jobs.completed': {
          guard: 'completionApplies',
          target: 'succeeded',
          actions: 'recordSuccess',
        },
        reschedule: { target: 'retrying', reenter: true, actions: 'moveRetry' },
        cancel: { target: 'cancelled', actions: 'markCancelled' },
      },
    },
    succeeded: { type: 'final' },
    dead: { type: 'final' },
    cancelled: { type: 'final' },
  },
});

export type JobMachine = typeof jobMachine;
export type JobSnapshot = SnapshotFrom<JobMachine>;

/** The instant the job waits for in its current state, or null when it waits for nothing. */
export function nextWakeAt(state: JobState, context: JobContext): number | null {
  switch (state) {
    case 'pending':
      return context.dueAt;
    case 'awaiting-ack':
      return context.deadlineAt;
    case 'retrying':
      return context.retryAt;
    default:
      return null;
  }
}

/** The timer each waiting state invokes, by the invoke id the machine gives it. */
const TIMERS: Partial<Record<JobState, { id: string; event: WaitInput['event'] }>> = {
  pending: { id: 'dueTimer', event: 'due' },
  'awaiting-ack': { id: 'deadlineTimer', event: 'deadline.passed' },
  retrying: { id: 'backoffTimer', event: 'backoff.elapsed' },
};

/**
 * Rebuilds a persisted snapshot's timer child from the instant in its context,
 * so a restored actor waits for exactly that instant whatever the stored child
 * entry holds (a snapshot built by pure `transition()` has none with input).
 */
export function withTimerFromContext<S extends { value: unknown; context: unknown }>(
  snapshot: S,
): S & { children: Record<string, unknown> } {
  const state = snapshot.value as JobState;
  const timer = TIMERS[state];
  const at = nextWakeAt(state, snapshot.context as JobContext);
  const children =
    timer && at !== null
      ? {
          [timer.id]: {
            src: 'wait',
            snapshot: { status: 'active', input: { at, event: timer.event } },
          },
        }
      : {};
  return { ...snapshot, children };
}

export function isFinal(state: JobState): boolean {
  return FINAL_STATES.includes(state);
}

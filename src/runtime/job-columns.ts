import {
  nextWakeAt,
  type JobContext,
  type JobSnapshot,
  type JobState,
} from '../../machines/job.machine.js';
import type { JobColumns } from '../store/sql.js';

export const EXECUTE_EVENT = 'jobs.execute';

/** `message_id` of an attempt: the same for every publish of it, so duplicates can be dropped. */
export function messageId(jobId: string, attempt: number): string {
  return `${jobId}:${attempt}`;
}

export function executeRoutingKey(jobType: string): string {
  return `jobs.execute.${jobType}`;
}

/**
 * The outbox entry of a dispatched job: what the relay publishes after the
 * attempt is durable, and publishes again after a crash before its confirm.
 */
export function outboxEntry(context: JobContext) {
  return {
    message_id: messageId(context.jobId, context.attempt),
    routing_key: executeRoutingKey(context.jobType),
    attempt: context.attempt,
  };
}

/** The `jobs.execute` body of the current attempt, stamped with `sentAt`. */
export function executeBody(context: JobContext, sentAt: number) {
  return {
    event_type: EXECUTE_EVENT,
    job_id: context.jobId,
    job_type: context.jobType,
    scheduled_for: new Date(context.scheduledFor).toISOString(),
    sent_at: new Date(sentAt).toISOString(),
    timeout_seconds: context.timeoutSeconds,
    metadata: context.metadata,
    attempt: context.attempt,
    max_attempts: context.attemptLimit,
  };
}

/**
 * What the store keeps of a snapshot: its status, state and context. Waiting
 * states' timers are not kept: restore rebuilds them from the instants in the
 * context (`withTimerFromContext`), which also saves walking and storing the
 * children on every write.
 */
export function persistedSnapshot(snapshot: JobSnapshot) {
  return {
    status: snapshot.status,
    value: snapshot.value,
    historyValue: {},
    context: snapshot.context,
    children: {},
  };
}

/** The row columns a snapshot implies. */
export function columnsOf(snapshot: JobSnapshot): JobColumns {
  const state = snapshot.value as JobState;
  const c = snapshot.context;
  return {
    state,
    attempt: c.attempt,
    maxAttempts: c.attemptLimit,
    scheduledFor: c.scheduledFor,
    nextAt: nextWakeAt(state, c),
    expiresAt: c.expiresAt,
    metadata: c.metadata,
    result: c.result,
    lastError: c.lastError,
    snapshot: persistedSnapshot(snapshot),
    outbox: state === 'dispatched' ? outboxEntry(c) : null,
    finishedAt: c.finishedAt,
  };
}

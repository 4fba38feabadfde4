import { EventEmitter } from 'node:events';

/** A committed transition of one job, as `job_transitions` holds it. */
export interface TransitionEvent {
  /** The row id in `job_transitions` (a bigint, as a string): increasing, usable as an SSE id. */
  id: string;
  jobId: string;
  jobType: string;
  from: string | null;
  to: string;
  event: string;
  attempt: number;
  /** Epoch ms. */
  at: number;
  detail: Record<string, unknown> | null;
}

/**
 * What the service reports as it works, for metrics, logs and the inspector.
 * Listeners run synchronously on the hot path: keep them cheap.
 */
export interface SchedulerEvents {
  /** A job changed state (or moved its wait), and the change is committed. */
  transition: [TransitionEvent];
  /** An attempt was published and confirmed; `lagMs` runs from the instant it was due. */
  dispatched: [{ jobType: string; lagMs: number }];
  /** A backend reply changed a job; `latencyMs` runs from the attempt's publish. */
  replied: [{ jobType: string; reply: 'jobs.completed' | 'jobs.failed'; latencyMs: number | null }];
  /** A group commit wrote `rows` job rows in one statement that took `ms`. */
  committed: [{ rows: number; ms: number }];
  /** The broker connection was lost (`up: false`) or is back (`up: true`). */
  broker: [{ up: boolean }];
}

export class SchedulerEventBus extends EventEmitter<SchedulerEvents> {
  constructor() {
    super();
    // The inspector's streams each listen; their number is bounded elsewhere.
    this.setMaxListeners(0);
  }
}

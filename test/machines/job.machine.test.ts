import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createActor, initialTransition, transition } from 'xstate';
import {
  JOB_MACHINE_VERSION,
  jobMachine,
  nextWakeAt,
  type JobContext,
  type JobEvent,
  type JobInput,
  type JobSnapshot,
  type JobState,
} from '../../machines/job.machine.js';
import { backoffMs } from '../../machines/backoff.js';
import { migrateSnapshot, SnapshotMigrationError } from '../../machines/snapshot-migrations.js';
import { createFakeWaits } from '../support/fake-waits.js';

const T0 = Date.parse('2026-01-01T00:00:00Z');
const SECOND = 1000;

const input: JobInput = {
  jobId: '6f1c1a52-2f7a-4c2b-9a37-0d6f4f3c1a11',
  jobType: 'lesson_reminder',
  scheduledFor: T0 + 60 * SECOND,
  expiresAt: null,
  timeoutSeconds: 30,
  maxAttempts: 3,
  minRetryDelayMs: 10 * SECOND,
  maxRetryDelayMs: 100 * SECOND,
  publishRetryDelayMs: SECOND,
  metadata: { lesson_id: 7 },
  subject: null,
  anchor: null,
};

function start(overrides: Partial<JobInput> = {}): JobSnapshot {
  return initialTransition(jobMachine, { ...input, ...overrides })[0];
}

function run(snapshot: JobSnapshot, ...events: JobEvent[]): JobSnapshot {
  return events.reduce((s, e) => transition(jobMachine, s, e)[0], snapshot);
}

/** A snapshot in `state`, reached through the machine's own transitions. */
function reach(state: JobState, overrides: Partial<JobInput> = {}): JobSnapshot {
  const pending = start(overrides);
  const at = pending.context.dueAt;
  const paths: Partial<Record<JobState, JobEvent[]>> = {
    pending: [],
    dispatched: [{ type: 'due', at, jitter: 0 }],
    'awaiting-ack': [
      { type: 'due', at, jitter: 0 },
      { type: 'publish.confirmed', at: at + 5, sentAt: at + 5 },
    ],
    retrying: [
      { type: 'due', at, jitter: 0 },
      { type: 'publish.confirmed', at: at + 5, sentAt: at + 5 },
      { type: 'jobs.failed', at: at + 10, errorMessage: 'boom', shouldRetry: true, jitter: 0 },
    ],
  };
  const snapshot = run(pending, ...(paths[state] ?? []));
  assert.equal(snapshot.value, state);
  return snapshot;
}

const due = (at: number): JobEvent => ({ type: 'due', at, jitter: 0 });
const completed = (at: number, attempt?: number): JobEvent => ({
  type: 'jobs.completed',
  at,
  result: { sent: 1 },
  ...(attempt === undefined ? {} : { attempt }),
});
const failed = (at: number, extra: Partial<Extract<JobEvent, { type: 'jobs.failed' }>> = {}) =>
  ({
    type: 'jobs.failed',
    at,
    errorMessage: 'boom',
    shouldRetry: true,
    jitter: 0,
    ...extra,
  }) as JobEvent;

describe('backoff', () => {
  it('doubles from the minimum per failure and stops at the cap', () => {
    assert.deepEqual(
      [1, 2, 3, 4, 5, 6].map((n) => backoffMs(n, 1000, 10_000, 0)),
      [1000, 2000, 4000, 8000, 10_000, 10_000],
    );
  });

  it('adds at most 20% jitter and never goes below the minimum', () => {
    assert.equal(backoffMs(1, 1000, 10_000, 0.999999), 1200);
    assert.equal(backoffMs(3, 1000, 10_000, 0.5), 4400);
    assert.equal(backoffMs(1, 5000, 1000, 0), 5000, 'a cap below the minimum keeps the minimum');
  });

  it('stays finite for a huge failure count', () => {
    assert.equal(backoffMs(10_000, 1000, 3_600_000, 0), 3_600_000);
  });
});

describe('job machine: pending', () => {
  it('starts pending, waiting for scheduled_for', () => {
    const s = start();
    assert.equal(s.value, 'pending');
    assert.equal(s.context.attempt, 0);
    assert.equal(nextWakeAt('pending', s.context), input.scheduledFor);
  });

  it('a due timer before the cutoff dispatches attempt 1', () => {
    const s = run(start({ expiresAt: input.scheduledFor + 1000 }), due(input.scheduledFor));
    assert.equal(s.value, 'dispatched');
    assert.equal(s.context.attempt, 1);
  });

  it('a due timer after the cutoff ends the job dead, expired', () => {
    const s = run(start({ expiresAt: input.scheduledFor + 1000 }), due(input.scheduledFor + 1001));
    assert.equal(s.value, 'dead');
    assert.equal(s.context.lastError, 'expired');
    assert.equal(s.context.deadReason, 'expired');
    assert.equal(s.context.attempt, 0, 'no attempt is spent');
  });

  it('a cancel ends it cancelled', () => {
    const s = run(start(), { type: 'cancel', at: T0 });
    assert.equal(s.value, 'cancelled');
    assert.equal(s.context.finishedAt, T0);
  });

  it('a reschedule moves the due instant and the cutoff by the same shift', () => {
    const s = run(start({ expiresAt: input.scheduledFor + 500 }), {
      type: 'reschedule',
      at: T0,
      dueAt: input.scheduledFor + 10_000,
    });
    assert.equal(s.value, 'pending');
    assert.equal(s.context.dueAt, input.scheduledFor + 10_000);
    assert.equal(s.context.expiresAt, input.scheduledFor + 10_500);
  });

  it('a completion before any attempt was sent changes nothing', () => {
    const before = start();
    assert.equal(run(before, completed(T0)), before);
  });
});

describe('job machine: dispatched', () => {
  it('a publish confirm moves to awaiting-ack with the deadline from sent_at', () => {
    const s = run(reach('dispatched'), { type: 'publish.confirmed', at: T0, sentAt: T0 + 7 });
    assert.equal(s.value, 'awaiting-ack');
    assert.equal(s.context.sentAt, T0 + 7);
    assert.equal(s.context.deadlineAt, T0 + 7 + 30 * SECOND);
  });

  it('a failed publish backs off and keeps the same attempt', () => {
    const s = run(reach('dispatched'), {
      type: 'publish.failed',
      at: T0,
      error: 'nack',
      jitter: 0,
    });
    assert.equal(s.value, 'retrying');
    assert.equal(s.context.attempt, 1);
    assert.equal(s.context.republish, true);
    assert.equal(s.context.retryAt, T0 + SECOND);
    const again = run(s, { type: 'backoff.elapsed', at: T0 + SECOND, jitter: 0 });
    assert.equal(again.value, 'dispatched');
    assert.equal(again.context.attempt, 1, 'the broker being down spends no attempt');
  });

  it('failed publishes in a row double their backoff', () => {
    let s = reach('dispatched');
    const waits: number[] = [];
    for (let i = 0; i < 3; i += 1) {
      s = run(s, { type: 'publish.failed', at: T0, error: 'down', jitter: 0 });
      waits.push((s.context.retryAt ?? 0) - T0);
      s = run(s, { type: 'backoff.elapsed', at: T0, jitter: 0 });
    }
    assert.deepEqual(waits, [1000, 2000, 4000]);
  });

  it('a failed publish whose retry would fall after the cutoff ends dead, expired', () => {
    const expiresAt = input.scheduledFor + 500;
    const s = run(reach('dispatched', { expiresAt }), {
      type: 'publish.failed',
      at: input.scheduledFor,
      error: 'returned',
      jitter: 0,
    });
    assert.equal(s.value, 'dead');
    assert.equal(s.context.lastError, 'expired');
  });

  it('a completion (the confirm was lost) ends it succeeded', () => {
    assert.equal(run(reach('dispatched'), completed(T0)).value, 'succeeded');
  });

  it('a failure of the current attempt goes to retrying', () => {
    assert.equal(run(reach('dispatched'), failed(T0, { attempt: 1 })).value, 'retrying');
  });

  it('a cancel ends it cancelled', () => {
    assert.equal(run(reach('dispatched'), { type: 'cancel', at: T0 }).value, 'cancelled');
  });

  it('an expire check after the cutoff (restored after downtime) ends it dead, expired, unsent', () => {
    const expiresAt = input.scheduledFor + 1000;
    const s = run(reach('dispatched', { expiresAt }), { type: 'expire', at: expiresAt + 1 });
    assert.equal(s.value, 'dead');
    assert.equal(s.context.lastError, 'expired');
  });

  it('an expire check before the cutoff changes nothing', () => {
    const before = reach('dispatched', { expiresAt: input.scheduledFor + 1000 });
    assert.equal(run(before, { type: 'expire', at: input.scheduledFor + 1000 }), before);
  });
});

describe('job machine: awaiting-ack', () => {
  it('a completion without attempt ends it succeeded with the result', () => {
    const s = run(reach('awaiting-ack'), completed(T0));
    assert.equal(s.value, 'succeeded');
    assert.deepEqual(s.context.result, { sent: 1 });
    assert.equal(s.context.finishedAt, T0);
  });

  it('a completion for an attempt never sent changes nothing', () => {
    const before = reach('awaiting-ack');
    assert.equal(run(before, completed(T0, 2)), before);
  });

  it('a completion for an earlier attempt still completes the job', () => {
    const second = run(
      reach('retrying'),
      { type: 'backoff.elapsed', at: T0, jitter: 0 },
      {
        type: 'publish.confirmed',
        at: T0,
        sentAt: T0,
      },
    );
    assert.equal(second.context.attempt, 2);
    assert.equal(run(second, completed(T0, 1)).value, 'succeeded');
  });

  it('a failure backs off from the minimum delay, doubling per failure', () => {
    const first = run(reach('awaiting-ack'), failed(T0));
    assert.equal(first.value, 'retrying');
    assert.equal(first.context.retryAt, T0 + 10 * SECOND);
    assert.equal(first.context.lastError, 'boom');
    const second = run(
      first,
      { type: 'backoff.elapsed', at: T0, jitter: 0 },
      { type: 'publish.confirmed', at: T0, sentAt: T0 },
      failed(T0),
    );
    assert.equal(second.context.retryAt, T0 + 20 * SECOND);
  });

  it('a failure for another attempt changes nothing', () => {
    const before = reach('awaiting-ack');
    assert.equal(run(before, failed(T0, { attempt: 2 })), before);
    assert.equal(run(before, failed(T0, { attempt: 0 })), before);
  });

  it('should_retry false ends it dead whatever attempts remain', () => {
    const s = run(reach('awaiting-ack'), failed(T0, { shouldRetry: false, errorMessage: 'gone' }));
    assert.equal(s.value, 'dead');
    assert.equal(s.context.deadReason, 'retry-refused');
    assert.equal(s.context.lastError, 'gone');
  });

  it('the last attempt failing ends it dead', () => {
    let s = reach('awaiting-ack', { maxAttempts: 2 });
    s = run(s, failed(T0), { type: 'backoff.elapsed', at: T0, jitter: 0 });
    s = run(s, { type: 'publish.confirmed', at: T0, sentAt: T0 }, failed(T0));
    assert.equal(s.value, 'dead');
    assert.equal(s.context.attempt, 2);
    assert.equal(s.context.deadReason, 'attempts-exhausted');
  });

  it('a failure whose retry would fall after the cutoff ends dead, expired, at once', () => {
    const expiresAt = input.scheduledFor + 5 * SECOND;
    const s = run(reach('awaiting-ack', { expiresAt }), failed(input.scheduledFor + SECOND));
    assert.equal(s.value, 'dead');
    assert.equal(s.context.lastError, 'expired');
  });

  it('a passed deadline counts as a failure of the attempt', () => {
    const s = run(reach('awaiting-ack'), { type: 'deadline.passed', at: T0, jitter: 0 });
    assert.equal(s.value, 'retrying');
    assert.match(s.context.lastError ?? '', /no reply within 30 s/);
  });

  it('a passed deadline on the last attempt ends it dead', () => {
    const s = run(reach('awaiting-ack', { maxAttempts: 1 }), {
      type: 'deadline.passed',
      at: T0,
      jitter: 0,
    });
    assert.equal(s.value, 'dead');
  });

  it('a duplicate publish confirm changes nothing', () => {
    const before = reach('awaiting-ack');
    assert.equal(run(before, { type: 'publish.confirmed', at: T0, sentAt: T0 }), before);
  });

  it('a cancel ends it cancelled, and a late reply then changes nothing', () => {
    const s = run(reach('awaiting-ack'), { type: 'cancel', at: T0 });
    assert.equal(s.value, 'cancelled');
    assert.equal(run(s, completed(T0 + 1)), s);
  });
});

describe('job machine: retrying', () => {
  it('the elapsed backoff dispatches the next attempt', () => {
    const s = run(reach('retrying'), { type: 'backoff.elapsed', at: T0, jitter: 0 });
    assert.equal(s.value, 'dispatched');
    assert.equal(s.context.attempt, 2);
  });

  it('the elapsed backoff after the cutoff ends it dead, expired', () => {
    const expiresAt = input.scheduledFor + 60 * SECOND;
    const s = run(reach('retrying', { expiresAt }), {
      type: 'backoff.elapsed',
      at: expiresAt + 1,
      jitter: 0,
    });
    assert.equal(s.value, 'dead');
    assert.equal(s.context.lastError, 'expired');
  });

  it('a completion for the failed attempt ends it succeeded and drops the retry', () => {
    const s = run(reach('retrying'), completed(T0, 1));
    assert.equal(s.value, 'succeeded');
    assert.equal(s.context.retryAt, null);
  });

  it('a late failure changes nothing', () => {
    const before = reach('retrying');
    assert.equal(run(before, failed(T0, { attempt: 1 })), before);
  });

  it('a reschedule moves the retry instant', () => {
    const s = run(reach('retrying'), { type: 'reschedule', at: T0, dueAt: T0 + 999_000 });
    assert.equal(s.value, 'retrying');
    assert.equal(s.context.retryAt, T0 + 999_000);
  });

  it('a cancel ends it cancelled', () => {
    assert.equal(run(reach('retrying'), { type: 'cancel', at: T0 }).value, 'cancelled');
  });
});

describe('job machine: final states', () => {
  for (const final of ['succeeded', 'dead', 'cancelled'] as const) {
    it(`${final} ignores replies, cancels and timers`, () => {
      const toFinal: Record<typeof final, JobEvent> = {
        succeeded: completed(T0),
        dead: failed(T0, { shouldRetry: false }),
        cancelled: { type: 'cancel', at: T0 },
      };
      const s = run(reach('awaiting-ack'), toFinal[final]);
      assert.equal(s.value, final);
      assert.equal(s.status, 'done');
      for (const e of [completed(T0), failed(T0), { type: 'cancel', at: T0 } as JobEvent]) {
        assert.equal(run(s, e), s);
      }
    });
  }
});

describe('job machine: a manual retry of a dead job', () => {
  it('numbers attempts on with a fresh budget', () => {
    const s = start({ attemptsBefore: 3, maxAttempts: 2 });
    assert.equal(s.context.attempt, 3);
    const next = run(s, due(s.context.dueAt));
    assert.equal(next.context.attempt, 4);
    assert.equal(next.context.attemptLimit, 5);
  });
});

describe('job machine: restoring a persisted snapshot', () => {
  /** A snapshot as the store keeps it: persisted, then through JSON. */
  function persisted(state: JobState): unknown {
    const snapshot = jobMachine.getPersistedSnapshot(reach(state));
    return JSON.parse(JSON.stringify(snapshot));
  }

  function restore(state: JobState, now: number) {
    const waits = createFakeWaits(now);
    const events: string[] = [];
    const snapshot = migrateSnapshot(
      persisted(state),
      JOB_MACHINE_VERSION,
    ) as unknown as JobSnapshot;
    const actor = createActor(jobMachine.provide({ actors: { wait: waits.logic } }), {
      snapshot,
    } as never);
    actor.subscribe((s) => events.push(String(s.value)));
    actor.start();
    return { actor, waits, events };
  }

  const instants: Record<string, (c: JobContext) => number> = {
    pending: (c) => c.dueAt,
    'awaiting-ack': (c) => c.deadlineAt ?? 0,
    retrying: (c) => c.retryAt ?? 0,
  };

  for (const [state, wakeAt] of Object.entries(instants)) {
    it(`${state}, its instant not yet passed, waits only for what is left`, async () => {
      const instant = wakeAt(reach(state as JobState).context);
      const { actor, waits } = restore(state as JobState, instant - 5000);
      await Promise.resolve();
      assert.equal(actor.getSnapshot().value, state);
      assert.deepEqual(waits.pending(), [instant]);
      waits.advanceTo(instant - 1);
      assert.equal(actor.getSnapshot().value, state, 'not a millisecond early');
      waits.advanceTo(instant);
      assert.notEqual(actor.getSnapshot().value, state);
      actor.stop();
    });

    it(`${state}, its instant passed while down, moves on at once`, async () => {
      const instant = wakeAt(reach(state as JobState).context);
      const { actor } = restore(state as JobState, instant + 60_000);
      await new Promise((r) => setImmediate(r));
      assert.notEqual(actor.getSnapshot().value, state);
      actor.stop();
    });
  }

  it('dispatched comes back dispatched with the same attempt, ready to publish again', () => {
    const { actor, waits } = restore('dispatched', T0 + 10 * 86_400_000);
    assert.equal(actor.getSnapshot().value, 'dispatched');
    assert.equal(actor.getSnapshot().context.attempt, 1);
    assert.deepEqual(waits.pending(), []);
    actor.send({ type: 'publish.confirmed', at: T0, sentAt: T0 });
    assert.equal(actor.getSnapshot().value, 'awaiting-ack');
    actor.stop();
  });
});

describe('snapshot migration', () => {
  const current = () => JSON.parse(JSON.stringify(jobMachine.getPersistedSnapshot(start())));

  it('a current-version snapshot passes with its timer rebuilt from the context', () => {
    const migrated = migrateSnapshot(current(), JOB_MACHINE_VERSION) as {
      children: Record<string, { snapshot: { input: unknown } }>;
    };
    assert.deepEqual(migrated.children['dueTimer']?.snapshot.input, {
      at: input.scheduledFor,
      event: 'due',
    });
  });

  it('a snapshot from a version with no migration is refused, naming both versions', () => {
    assert.throws(
      () => migrateSnapshot(current(), JOB_MACHINE_VERSION + 1),
      (e: unknown) =>
        e instanceof SnapshotMigrationError && /version 2.*runs version 1/.test(e.message),
    );
    assert.throws(() => migrateSnapshot(current(), 0), SnapshotMigrationError);
  });

  it('a snapshot naming a state the machine does not have is refused', () => {
    const bad = { ...current(), value: 'sleeping' };
    assert.throws(() => migrateSnapshot(bad, JOB_MACHINE_VERSION), /unknown state "sleeping"/);
  });

  it('a snapshot whose context lacks a field is refused, naming it', () => {
    const bad = current();
    delete bad.context.attemptLimit;
    assert.throws(() => migrateSnapshot(bad, JOB_MACHINE_VERSION), /lacks attemptLimit/);
  });
});

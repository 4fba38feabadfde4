import { Observable } from 'rxjs';
import { fromEventObservable } from 'xstate';
import type { JobEvent, WaitInput } from '../../machines/job.machine.js';

type TimerEvent = Extract<JobEvent, { type: 'due' | 'deadline.passed' | 'backoff.elapsed' }>;

/**
 * A hand-driven clock for the job machine's `wait` actor: waits fire when the
 * test moves the clock past their instant; one already past fires on the next
 * microtask, as the real timer fires on the next turn.
 */
export function createFakeWaits(start: number, jitter = 0.5) {
  let now = start;
  const waits = new Set<{ at: number; fire: () => void }>();

  const logic = fromEventObservable<TimerEvent, WaitInput>(
    ({ input }) =>
      new Observable<TimerEvent>((subscriber) => {
        const entry = {
          at: input.at,
          fire: () => {
            waits.delete(entry);
            subscriber.next({ type: input.event, at: now, jitter });
            subscriber.complete();
          },
        };
        waits.add(entry);
        if (input.at <= now) queueMicrotask(() => waits.has(entry) && entry.fire());
        return () => waits.delete(entry);
      }),
  );

  return {
    logic,
    now: () => now,
    pending: () => [...waits].map((w) => w.at).sort((a, b) => a - b),
    advanceTo(instant: number) {
      now = instant;
      for (const wait of [...waits].sort((a, b) => a.at - b.at)) {
        if (wait.at <= now && waits.has(wait)) wait.fire();
      }
    },
  };
}

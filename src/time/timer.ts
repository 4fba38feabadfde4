import { defer, map, switchMap, timer, type Observable, type SchedulerLike } from 'rxjs';
import { asyncScheduler } from 'rxjs';

/**
 * The longest delay Node's timers keep. A longer one overflows and fires after
 * 1 ms (https://github.com/ReactiveX/rxjs/issues/3015), so a 30-day `timer()`
 * would fire at once.
 */
export const MAX_TIMER_MS = 2 ** 31 - 1;

export interface TimerOptions {
  /** Clock in epoch ms; default `Date.now`. */
  now?: () => number;
  /** Longest single wait in ms; default `MAX_TIMER_MS`. */
  maxChunkMs?: number;
  scheduler?: SchedulerLike;
}

/**
 * Emits the clock's reading once at the absolute instant `at` (epoch ms), then
 * completes. A wait longer than one timer can hold is chained in chunks, and
 * the clock is read again before each, so the stream never fires early. An
 * instant already past fires on the next turn of the event loop.
 */
export function timerAt(at: number, options: TimerOptions = {}): Observable<number> {
  const now = options.now ?? Date.now;
  const maxChunkMs = options.maxChunkMs ?? MAX_TIMER_MS;
  const scheduler = options.scheduler ?? asyncScheduler;

  return defer(() => {
    const left = Math.max(0, at - now());
    if (left <= maxChunkMs) {
      return timer(left, scheduler).pipe(map(() => now()));
    }
    return timer(maxChunkMs, scheduler).pipe(switchMap(() => timerAt(at, options)));
  });
}

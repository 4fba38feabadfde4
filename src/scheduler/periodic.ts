import { v5 as uuidv5 } from 'uuid';
import type { FireTimes } from './fire-times.js';

/** Namespace of tick job ids: one id per schedule and tick instant. */
const TICK_NAMESPACE = 'b4b0a3c2-6a51-4c55-8f0e-2f7f5f0e9d61';

/**
 * The id of the job a schedule's tick creates. Every instance and every
 * restart derives the same id for the same tick, and the primary key lets
 * only one of them create it: a tick fires once.
 */
export function tickJobId(schedule: string, tick: number): string {
  return uuidv5(`${schedule}@${new Date(tick).toISOString()}`, TICK_NAMESPACE);
}

/** What a due tick comes to. */
export interface TickDecision {
  /** The tick instant that runs now, or null when none does. */
  fireAt: number | null;
  /** Ticks that passed without a run: too late, or superseded by a later one. */
  missed: number;
  /** Ticks not run because the previous run was still in flight. */
  skipped: number;
  /** The next tick to wait for, strictly after `now` (null when the timing has none). */
  next: number | null;
}

/** Lateness always tolerated, whatever the misfire grace says, in ms. */
export const MIN_GRACE_MS = 1000;

/**
 * Decides a due tick. All ticks from `due` up to `now` give at most one run:
 * the latest of them, if it is at most `graceMs` late and no previous run is
 * in flight (unless overlap is allowed); every other one is counted, as
 * missed or skipped. Never a burst, and the next tick is always after `now`.
 */
export function decideTick(input: {
  times: FireTimes;
  due: number;
  now: number;
  graceMs: number;
  inFlight: boolean;
  allowOverlap: boolean;
}): TickDecision {
  const { times, due, now } = input;
  const { latest, count } = times.latestUpTo(due, now);
  const next = times.next(Math.max(latest, now));
  // A tick is only ever looked at after it is due, after a database round
  // trip: a grace of 0 would count every tick missed.
  const graceMs = Math.max(input.graceMs, MIN_GRACE_MS);
  if (now - latest > graceMs) return { fireAt: null, missed: count, skipped: 0, next };
  if (input.inFlight && !input.allowOverlap) {
    return { fireAt: null, missed: count - 1, skipped: 1, next };
  }
  return { fireAt: latest, missed: count - 1, skipped: 0, next };
}

import type { Cron } from 'croner';
import { parseCron, type ScheduleTiming } from '../../config/schedules.js';
import { instantsOf, offsetAt } from './zone.js';

/** The instants a schedule fires at. */
export interface FireTimes {
  /** The first fire instant strictly after `after` (epoch ms), or null when there is none. */
  next(after: number): number | null;
  /**
   * The latest fire instant at or before `now`, from `from` (itself a fire
   * instant at or before `now`), with the number of fire instants in
   * [`from`, latest]; `exact` is false when that count stopped at a cap.
   */
  latestUpTo(from: number, now: number): { latest: number; count: number; exact: boolean };
}

/**
 * Largest total change of a zone's offset around one instant that the search
 * allows for. Real changes are 30 minutes to 2 hours.
 */
const MAX_SHIFT_MS = 3 * 3_600_000;

/**
 * Wall times a search may look at before it gives up. A schedule that fires
 * at all finds its next instant within a few thousand (an every-second cron
 * through a skipped hour: 3,600); the cap keeps a pathological expression
 * from blocking the event loop.
 */
const MAX_CANDIDATES = 100_000;

/**
 * Fire instants counted one by one when catching up after downtime; past this
 * the count stops (about 60 ms of an every-second cron) and the latest is bisected.
 */
const MAX_COUNTED = 1000;

export function fireTimes(timing: ScheduleTiming): FireTimes {
  return timing.kind === 'interval' ? intervalTimes(timing.everyMs) : new CronTimes(timing);
}

/** Multiples of `everyMs` since the epoch: the same ticks on every instance, after any restart. */
function intervalTimes(everyMs: number): FireTimes {
  return {
    next: (after) => (Math.floor(after / everyMs) + 1) * everyMs,
    latestUpTo(from, now) {
      const latest = Math.max(from, Math.floor(now / everyMs) * everyMs);
      return { latest, count: Math.round((latest - from) / everyMs) + 1, exact: true };
    },
  };
}

/**
 * A cron expression in an IANA zone with explicit daylight-saving policies.
 * croner enumerates matching wall times with the zone left out (UTC fields),
 * which is plain calendar arithmetic; each wall time is then mapped to the
 * instants at which the zone shows it, and the gap and fold policies decide
 * which of those run. Candidates are searched in wall order, but the instants
 * they map to are not in that order around a change, so the search keeps the
 * least instant after `after` until no later wall time can map below it.
 */
class CronTimes implements FireTimes {
  private readonly cron: Cron;

  constructor(private readonly timing: Extract<ScheduleTiming, { kind: 'cron' }>) {
    this.cron = parseCron(timing.cron);
  }

  /** The instants one matching wall time runs at, under the schedule's policies. */
  private resolve(wall: number): number[] {
    const { instants, beforeGap } = instantsOf(this.timing.timezone, wall);
    if (instants.length === 0) {
      // A skipped local time, shifted forward by the gap: 02:30 becomes 03:30.
      return this.timing.gap === 'shift' ? [wall - beforeGap] : [];
    }
    if (instants.length === 1) return instants;
    switch (this.timing.fold) {
      case 'first':
        return instants.slice(0, 1);
      case 'last':
        return instants.slice(-1);
      case 'both':
        return instants;
    }
  }

  /** The extreme offsets within `MAX_SHIFT_MS` of `instant`. */
  private offsetsNear(instant: number): { low: number; high: number } {
    const zone = this.timing.timezone;
    const offsets = [-MAX_SHIFT_MS, 0, MAX_SHIFT_MS].map((d) => offsetAt(zone, instant + d));
    return { low: Math.min(...offsets), high: Math.max(...offsets) };
  }

  next(after: number): number | null {
    const near = this.offsetsNear(after);
    // No instant after `after` shows a wall time earlier than this.
    let cursor = after + near.low - 1;
    let highest = near.high;
    let best: number | null = null;

    for (let seen = 0; seen < MAX_CANDIDATES; seen += 1) {
      const wall = this.cron.nextRun(new Date(cursor))?.getTime();
      if (wall === undefined) break;
      // Every later wall time maps to an instant past `best`.
      if (best !== null && wall - highest > best) break;
      cursor = wall;
      for (const instant of this.resolve(wall)) {
        if (instant > after && (best === null || instant < best)) {
          best = instant;
          highest = Math.max(highest, this.offsetsNear(best).high);
        }
      }
    }
    return best;
  }

  latestUpTo(from: number, now: number): { latest: number; count: number; exact: boolean } {
    let latest = from;
    let count = 1;
    for (;;) {
      const next = this.next(latest);
      if (next === null || next > now) return { latest, count, exact: true };
      latest = next;
      count += 1;
      if (count >= MAX_COUNTED) break;
    }
    // Too many to count: bisect for the least x whose next instant is past now;
    // the latest instant up to now is the next one after x - 1.
    let low = latest;
    let high = now;
    while (high - low > 1) {
      const middle = Math.floor((low + high) / 2);
      const next = this.next(middle);
      if (next === null || next > now) high = middle;
      else low = middle;
    }
    const last = this.next(low);
    return { latest: last !== null && last <= now ? last : latest, count, exact: false };
  }
}

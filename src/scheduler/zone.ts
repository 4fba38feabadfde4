/**
 * Wall-clock arithmetic in an IANA zone through `Intl`, the runtime's own
 * time-zone data. A "wall" time is the local date and time written as if it
 * were UTC, in epoch ms: 02:30 on 2025-03-30 in Berlin is
 * `Date.UTC(2025, 2, 30, 2, 30)`, whether or not that local time exists.
 */

const DAY_MS = 86_400_000;
const formatters = new Map<string, Intl.DateTimeFormat>();

function formatter(zone: string): Intl.DateTimeFormat {
  let format = formatters.get(zone);
  if (!format) {
    format = new Intl.DateTimeFormat('en-US', {
      timeZone: zone,
      // h23: midnight is 00, never 24 (hour12: false gives 24 on some runtimes).
      hourCycle: 'h23',
      year: 'numeric',
      month: 'numeric',
      day: 'numeric',
      hour: 'numeric',
      minute: 'numeric',
      second: 'numeric',
    });
    formatters.set(zone, format);
  }
  return format;
}

/** The zone's UTC offset at `instant`, in ms (local minus UTC; +7,200,000 for CEST). */
export function offsetAt(zone: string, instant: number): number {
  const parts: Record<string, number> = {};
  for (const part of formatter(zone).formatToParts(instant)) {
    if (part.type !== 'literal') parts[part.type] = Number(part.value);
  }
  const wall = Date.UTC(
    parts['year'] ?? 1970,
    (parts['month'] ?? 1) - 1,
    parts['day'] ?? 1,
    parts['hour'] ?? 0,
    parts['minute'] ?? 0,
    parts['second'] ?? 0,
  );
  return wall - Math.floor(instant / 1000) * 1000;
}

/** The local wall time of `instant` in the zone. */
export function wallOf(zone: string, instant: number): number {
  return instant + offsetAt(zone, instant);
}

/**
 * The instants at which the zone's clocks show `wall`: one normally, two in
 * a fold (fall back: the earlier first), none in a gap (spring forward).
 * `beforeGap` is the offset in force just before the change around `wall`,
 * for a caller that wants to shift a gap's time forward by the gap's length.
 */
export function instantsOf(zone: string, wall: number): { instants: number[]; beforeGap: number } {
  // Offsets a day either side bracket any single change near `wall`.
  const before = offsetAt(zone, wall - DAY_MS);
  const after = offsetAt(zone, wall + DAY_MS);
  const instants: number[] = [];
  for (const offset of before === after ? [before] : [before, after]) {
    const candidate = wall - offset;
    if (wallOf(zone, candidate) === wall && !instants.includes(candidate)) {
      instants.push(candidate);
    }
  }
  instants.sort((a, b) => a - b);
  return { instants, beforeGap: before };
}

/** `instant` as ISO 8601 with the zone's offset, e.g. `2025-10-26T02:30:00+01:00`. */
export function localIso(zone: string, instant: number): string {
  const offset = offsetAt(zone, instant);
  const wall = new Date(instant + offset).toISOString().slice(0, 19);
  if (offset === 0) return `${wall}Z`;
  const minutes = Math.abs(offset) / 60_000;
  const hh = String(Math.floor(minutes / 60)).padStart(2, '0');
  const mm = String(minutes % 60).padStart(2, '0');
  return `${wall}${offset < 0 ? '-' : '+'}${hh}:${mm}`;
}

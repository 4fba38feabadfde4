/** Jitter adds up to this share of the backoff on top of it, never below it. */
export const JITTER_SHARE = 0.2;

/**
 * The wait before retry number `failures` (1-based): the minimum delay doubled
 * per earlier failure, capped, plus up to 20% jitter. `jitter` is a number in
 * [0, 1) drawn by the caller, so the function stays deterministic.
 */
export function backoffMs(failures: number, minMs: number, capMs: number, jitter: number): number {
  const exponent = Math.max(0, failures - 1);
  // 2 ** 60 already exceeds any cap; stop before the doubling leaves the safe range.
  const base = Math.min(capMs, minMs * 2 ** Math.min(exponent, 60));
  const floor = Math.max(base, minMs);
  const clamped = Math.min(Math.max(jitter, 0), 1);
  return Math.round(floor + floor * JITTER_SHARE * clamped);
}

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { fireTimes } from '../../src/scheduler/fire-times.js';
import { decideTick, MIN_GRACE_MS, tickJobId } from '../../src/scheduler/periodic.js';

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const at = (iso: string) => Date.parse(iso);
const hourly = fireTimes({ kind: 'interval', everyMs: HOUR });

describe('what a due tick comes to', () => {
  const base = { times: hourly, graceMs: 5 * MINUTE, inFlight: false, allowOverlap: false };

  /** An instant on 2025-01-01, from its UTC time of day. */
  const t = (time: string) => at(`2025-01-01T${time}Z`);

  type Expected = [fireAt: string | null, missed: number, skipped: number, next: string];
  // [title, due, now, in flight, overlap allowed, expected]
  const rows: [string, string, string, boolean, boolean, Expected][] = [
    ['on time: runs', '10:00:00', '10:00:00.004', false, false, ['10:00:00', 0, 0, '11:00:00']],
    [
      'late within the grace: runs late',
      '10:00:00',
      '10:04:59',
      false,
      false,
      ['10:00:00', 0, 0, '11:00:00'],
    ],
    [
      'later than the grace: missed',
      '10:00:00',
      '10:05:01',
      false,
      false,
      [null, 1, 0, '11:00:00'],
    ],
    [
      'five ticks down, the latest within the grace: one run, four missed',
      '10:00:00',
      '14:03:00',
      false,
      false,
      ['14:00:00', 4, 0, '15:00:00'],
    ],
    [
      'five ticks down, the latest beyond the grace: no run, five missed',
      '10:00:00',
      '14:30:00',
      false,
      false,
      [null, 5, 0, '15:00:00'],
    ],
    [
      'previous run in flight: skipped',
      '10:00:00',
      '10:00:01',
      true,
      false,
      [null, 0, 1, '11:00:00'],
    ],
    [
      'previous run in flight, overlap allowed: runs',
      '10:00:00',
      '10:00:01',
      true,
      true,
      ['10:00:00', 0, 0, '11:00:00'],
    ],
    [
      'after downtime with the previous run in flight: the latest skipped, the rest missed',
      '10:00:00',
      '12:01:00',
      true,
      false,
      [null, 2, 1, '13:00:00'],
    ],
  ];
  for (const [title, due, now, inFlight, allowOverlap, [fireAt, missed, skipped, next]] of rows) {
    it(title, () => {
      const decision = decideTick({ ...base, due: t(due), now: t(now), inFlight, allowOverlap });
      assert.deepEqual(decision, {
        fireAt: fireAt === null ? null : t(fireAt),
        missed,
        skipped,
        next: t(next),
      });
    });
  }

  it('a zero grace still runs a tick handled within the round trip it takes to claim it', () => {
    // Regression: with a grace of 0 every tick was counted missed, since it is
    // only ever decided after a database round trip.
    const due = at('2025-01-01T10:00:00Z');
    assert.equal(decideTick({ ...base, graceMs: 0, due, now: due + 15 }).fireAt, due);
    assert.equal(decideTick({ ...base, graceMs: 0, due, now: due + MIN_GRACE_MS }).fireAt, due);
    assert.equal(
      decideTick({ ...base, graceMs: 0, due, now: due + MIN_GRACE_MS + 1 }).fireAt,
      null,
    );
  });

  it('the next tick is always after now, however long the service was down', () => {
    for (const downFor of [0, 1, HOUR - 1, HOUR, 10 * HOUR + 1, 365 * 24 * HOUR]) {
      const due = at('2025-01-01T10:00:00Z');
      const now = due + downFor;
      const { next } = decideTick({ ...base, due, now });
      assert.ok(next !== null && next > now, `down for ${downFor} ms`);
    }
  });
});

describe('catching up on a cron schedule', () => {
  const everySecond = fireTimes({
    kind: 'cron',
    cron: '* * * * * *',
    timezone: 'Europe/Berlin',
    gap: 'skip',
    fold: 'first',
  });

  it('counts each missed fire instant while there are few', () => {
    const from = at('2025-01-01T00:00:00Z');
    const result = everySecond.latestUpTo(from, from + 9_500);
    assert.deepEqual(result, { latest: from + 9_000, count: 10, exact: true });
  });

  it('after a long outage finds the latest instant without stepping through every one', () => {
    const from = at('2025-01-01T00:00:00Z');
    const now = at('2025-01-03T05:06:07.250Z');
    const result = everySecond.latestUpTo(from, now);
    assert.equal(result.latest, at('2025-01-03T05:06:07Z'));
    assert.equal(result.exact, false);
  });

  it('a daily cron after a week away: the latest is this morning, seven counted', () => {
    const daily = fireTimes({
      kind: 'cron',
      cron: '0 3 * * *',
      timezone: 'America/New_York',
      gap: 'shift',
      fold: 'first',
    });
    const from = at('2025-01-01T08:00:00Z'); // 03:00 EST
    const result = daily.latestUpTo(from, at('2025-01-07T09:00:00Z'));
    assert.deepEqual(result, { latest: at('2025-01-07T08:00:00Z'), count: 7, exact: true });
  });
});

describe('interval ticks', () => {
  it('fall on multiples of the interval since the epoch, on every instance', () => {
    const times = fireTimes({ kind: 'interval', everyMs: 1500 });
    assert.equal(times.next(0), 1500);
    assert.equal(times.next(1499), 1500);
    assert.equal(times.next(1500), 3000);
    assert.deepEqual(times.latestUpTo(1500, 7600), { latest: 7500, count: 5, exact: true });
  });

  it('give each tick its own job id, the same on every instance and restart', () => {
    const a = tickJobId('file_cleanup', at('2025-01-01T10:00:00Z'));
    assert.equal(a, tickJobId('file_cleanup', at('2025-01-01T10:00:00Z')));
    assert.notEqual(a, tickJobId('file_cleanup', at('2025-01-01T11:00:00Z')));
    assert.notEqual(a, tickJobId('mfa_expiry_cleanup', at('2025-01-01T10:00:00Z')));
  });
});

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { FoldPolicy, GapPolicy } from '../../config/schedules.js';
import { fireTimes } from '../../src/scheduler/fire-times.js';
import { instantsOf, localIso, offsetAt } from '../../src/scheduler/zone.js';

/**
 * The 2025 daylight-saving changes used below:
 * Europe/Berlin   spring 2025-03-30 01:00Z (02:00 CET -> 03:00 CEST),
 *                 autumn 2025-10-26 01:00Z (03:00 CEST -> 02:00 CET);
 * America/New_York spring 2025-03-09 07:00Z (02:00 EST -> 03:00 EDT),
 *                 autumn 2025-11-02 06:00Z (02:00 EDT -> 01:00 EST).
 */

const HOUR = 3_600_000;
const at = (iso: string) => Date.parse(iso);

function fires(
  cron: string,
  timezone: string,
  policy: { gap?: GapPolicy; fold?: FoldPolicy },
  from: string,
  count: number,
): string[] {
  const times = fireTimes({
    kind: 'cron',
    cron,
    timezone,
    gap: policy.gap ?? 'shift',
    fold: policy.fold ?? 'first',
  });
  const out: string[] = [];
  let after = Date.parse(from);
  for (let i = 0; i < count; i += 1) {
    const next = times.next(after);
    if (next === null) break;
    out.push(new Date(next).toISOString().replace(':00.000Z', 'Z'));
    after = next;
  }
  return out;
}

describe('the zone arithmetic under the cron schedules', () => {
  it('reads the offset on either side of each change', () => {
    assert.equal(offsetAt('Europe/Berlin', Date.parse('2025-03-30T00:59:59Z')), HOUR);
    assert.equal(offsetAt('Europe/Berlin', Date.parse('2025-03-30T01:00:00Z')), 2 * HOUR);
    assert.equal(offsetAt('America/New_York', Date.parse('2025-11-02T05:59:59Z')), -4 * HOUR);
    assert.equal(offsetAt('America/New_York', Date.parse('2025-11-02T06:00:00Z')), -5 * HOUR);
  });

  it('finds no instant for a skipped local time and two for a repeated one', () => {
    const gap = instantsOf('Europe/Berlin', Date.UTC(2025, 2, 30, 2, 30));
    assert.deepEqual(gap.instants, []);
    assert.equal(gap.beforeGap, HOUR);
    const fold = instantsOf('America/New_York', Date.UTC(2025, 10, 2, 1, 30));
    assert.deepEqual(
      fold.instants.map((t) => new Date(t).toISOString()),
      ['2025-11-02T05:30:00.000Z', '2025-11-02T06:30:00.000Z'],
    );
  });

  it('writes an instant with the offset in force, so a change shows in a preview', () => {
    const local = (zone: string, iso: string) => localIso(zone, Date.parse(iso));
    assert.equal(local('Europe/Berlin', '2025-10-26T00:30:00Z'), '2025-10-26T02:30:00+02:00');
    assert.equal(local('Europe/Berlin', '2025-10-26T01:30:00Z'), '2025-10-26T02:30:00+01:00');
    assert.equal(local('America/New_York', '2025-03-09T07:30:00Z'), '2025-03-09T03:30:00-04:00');
    assert.equal(local('UTC', '2025-03-09T07:30:00Z'), '2025-03-09T07:30:00Z');
    assert.equal(local('Asia/Kolkata', '2025-03-09T07:30:00Z'), '2025-03-09T13:00:00+05:30');
  });
});

// [cron, zone, policy, from, expected fire instants in UTC]
type Row = [string, string, { gap?: GapPolicy; fold?: FoldPolicy }, string, string[]];

const SPRING: Row[] = [
  // Berlin: 02:30 does not exist on 2025-03-30.
  [
    '30 2 * * *',
    'Europe/Berlin',
    { gap: 'shift' },
    '2025-03-29T12:00:00Z',
    ['2025-03-30T01:30Z', '2025-03-31T00:30Z', '2025-04-01T00:30Z'],
  ],
  [
    '30 2 * * *',
    'Europe/Berlin',
    { gap: 'skip' },
    '2025-03-29T12:00:00Z',
    ['2025-03-31T00:30Z', '2025-04-01T00:30Z', '2025-04-02T00:30Z'],
  ],
  // Asked from inside the new hour (03:10 CEST), the shifted 02:30 (03:30 CEST) is still ahead.
  [
    '30 2 * * *',
    'Europe/Berlin',
    { gap: 'shift' },
    '2025-03-30T01:10:00Z',
    ['2025-03-30T01:30Z', '2025-03-31T00:30Z'],
  ],
  // Every 30 minutes: the shifted 02:00 and 02:30 land on 03:00 and 03:30, which run once.
  [
    '*/30 * * * *',
    'Europe/Berlin',
    { gap: 'shift' },
    '2025-03-29T23:45:00Z',
    ['2025-03-30T00:00Z', '2025-03-30T00:30Z', '2025-03-30T01:00Z', '2025-03-30T01:30Z'],
  ],
  [
    '*/30 * * * *',
    'Europe/Berlin',
    { gap: 'skip' },
    '2025-03-29T23:45:00Z',
    ['2025-03-30T00:00Z', '2025-03-30T00:30Z', '2025-03-30T01:00Z', '2025-03-30T01:30Z'],
  ],
  // New York: 02:30 does not exist on 2025-03-09.
  [
    '30 2 * * *',
    'America/New_York',
    { gap: 'shift' },
    '2025-03-08T12:00:00Z',
    ['2025-03-09T07:30Z', '2025-03-10T06:30Z'],
  ],
  [
    '30 2 * * *',
    'America/New_York',
    { gap: 'skip' },
    '2025-03-08T12:00:00Z',
    ['2025-03-10T06:30Z', '2025-03-11T06:30Z'],
  ],
  // A fold policy plays no part in spring: 'last' changes nothing.
  [
    '30 2 * * *',
    'America/New_York',
    { gap: 'shift', fold: 'last' },
    '2025-03-08T12:00:00Z',
    ['2025-03-09T07:30Z', '2025-03-10T06:30Z'],
  ],
];

const AUTUMN: Row[] = [
  // Berlin: 02:30 happens twice on 2025-10-26, at 00:30Z (CEST) and 01:30Z (CET).
  [
    '30 2 * * *',
    'Europe/Berlin',
    { fold: 'first' },
    '2025-10-25T12:00:00Z',
    ['2025-10-26T00:30Z', '2025-10-27T01:30Z'],
  ],
  [
    '30 2 * * *',
    'Europe/Berlin',
    { fold: 'last' },
    '2025-10-25T12:00:00Z',
    ['2025-10-26T01:30Z', '2025-10-27T01:30Z'],
  ],
  [
    '30 2 * * *',
    'Europe/Berlin',
    { fold: 'both' },
    '2025-10-25T12:00:00Z',
    ['2025-10-26T00:30Z', '2025-10-26T01:30Z', '2025-10-27T01:30Z'],
  ],
  // Asked from inside the repeated hour (02:15 CET): 'first' has already run today.
  ['30 2 * * *', 'Europe/Berlin', { fold: 'first' }, '2025-10-26T01:15:00Z', ['2025-10-27T01:30Z']],
  [
    '30 2 * * *',
    'Europe/Berlin',
    { fold: 'last' },
    '2025-10-26T01:15:00Z',
    ['2025-10-26T01:30Z', '2025-10-27T01:30Z'],
  ],
  [
    '*/30 * * * *',
    'Europe/Berlin',
    { fold: 'first' },
    '2025-10-25T23:45:00Z',
    ['2025-10-26T00:00Z', '2025-10-26T00:30Z', '2025-10-26T02:00Z'],
  ],
  [
    '*/30 * * * *',
    'Europe/Berlin',
    { fold: 'both' },
    '2025-10-25T23:45:00Z',
    [
      '2025-10-26T00:00Z',
      '2025-10-26T00:30Z',
      '2025-10-26T01:00Z',
      '2025-10-26T01:30Z',
      '2025-10-26T02:00Z',
    ],
  ],
  // New York: 01:30 happens twice on 2025-11-02, at 05:30Z (EDT) and 06:30Z (EST).
  [
    '30 1 * * *',
    'America/New_York',
    { fold: 'first' },
    '2025-11-01T12:00:00Z',
    ['2025-11-02T05:30Z', '2025-11-03T06:30Z'],
  ],
  [
    '30 1 * * *',
    'America/New_York',
    { fold: 'last' },
    '2025-11-01T12:00:00Z',
    ['2025-11-02T06:30Z', '2025-11-03T06:30Z'],
  ],
  [
    '30 1 * * *',
    'America/New_York',
    { fold: 'both' },
    '2025-11-01T12:00:00Z',
    ['2025-11-02T05:30Z', '2025-11-02T06:30Z', '2025-11-03T06:30Z'],
  ],
  [
    '30 * * * *',
    'America/New_York',
    { fold: 'last' },
    '2025-11-02T04:00:00Z',
    ['2025-11-02T04:30Z', '2025-11-02T06:30Z', '2025-11-02T07:30Z'],
  ],
  // A gap policy plays no part in autumn: 'skip' changes nothing.
  [
    '30 1 * * *',
    'America/New_York',
    { gap: 'skip', fold: 'first' },
    '2025-11-01T12:00:00Z',
    ['2025-11-02T05:30Z', '2025-11-03T06:30Z'],
  ],
];

describe('cron schedules across daylight-saving changes', () => {
  for (const [title, rows] of [
    ['spring forward', SPRING],
    ['fall back', AUTUMN],
  ] as const) {
    describe(title, () => {
      for (const [cron, zone, policy, from, expected] of rows) {
        const gap = policy.gap ?? 'shift';
        const name = `${cron} in ${zone}, gap ${gap}, fold ${policy.fold ?? 'first'}`;
        it(`${name}, after ${from}: ${expected.join(', ')}`, () => {
          assert.deepEqual(fires(cron, zone, policy, from, expected.length), expected);
        });
      }
    });
  }

  it('a zone without daylight saving runs the wall time every day', () => {
    assert.deepEqual(fires('30 2 * * *', 'UTC', {}, '2025-03-29T12:00:00Z', 3), [
      '2025-03-30T02:30Z',
      '2025-03-31T02:30Z',
      '2025-04-01T02:30Z',
    ]);
  });

  it('each next fire instant is strictly after the one asked from, through a whole year', () => {
    const cases: [string, string, GapPolicy, FoldPolicy, number][] = [
      // A daily 02:30: 365 days, less the skipped one, plus the repeated one.
      ['30 2 * * *', 'Europe/Berlin', 'skip', 'both', 365],
      ['30 2 * * *', 'Europe/Berlin', 'shift', 'first', 365],
      ['30 2 * * *', 'Europe/Berlin', 'shift', 'both', 366],
      ['30 2 * * *', 'Europe/Berlin', 'skip', 'first', 364],
      ['30 1 * * *', 'America/New_York', 'skip', 'last', 365],
      ['0 * * * *', 'America/New_York', 'skip', 'both', 8760],
      // Hourly: the skipped hour is gone; with 'first' the repeated hour runs once.
      ['0 * * * *', 'America/New_York', 'shift', 'first', 8759],
    ];
    for (const [cron, timezone, gap, fold, expected] of cases) {
      const times = fireTimes({ kind: 'cron', cron, timezone, gap, fold });
      const end = Date.parse('2026-01-01T00:00:00Z');
      let after = Date.parse('2025-01-01T00:00:00Z') - 1;
      let count = 0;
      for (;;) {
        const next = times.next(after);
        assert.ok(next !== null && next > after, `${cron} ${timezone}: progress after ${after}`);
        if (next >= end) break;
        after = next;
        count += 1;
      }
      assert.equal(count, expected, `${cron} in ${timezone}, gap ${gap}, fold ${fold}`);
    }
  });

  it('an every-second cron steps through a skipped and a repeated hour without stalling', () => {
    const times = fireTimes({
      kind: 'cron',
      cron: '* * * * * *',
      timezone: 'Europe/Berlin',
      gap: 'skip',
      fold: 'first',
    });
    // 01:59:59 CET, then the clocks jump to 03:00 CEST: the next second is the next instant.
    assert.equal(times.next(at('2025-03-30T00:59:59Z')), at('2025-03-30T01:00:00Z'));
    // 02:59:59 CEST, then the clocks go back to 02:00 CET: 'first' waits for 03:00 CET.
    assert.equal(times.next(at('2025-10-26T00:59:59Z')), at('2025-10-26T02:00:00Z'));
    // Asked from inside the repeated hour, it still moves forward.
    assert.equal(times.next(at('2025-10-26T01:20:00Z')), at('2025-10-26T02:00:00Z'));
  });

  it("a yearly cron whose time falls in that year's gap waits, under skip, a year", () => {
    // 02:30 on 30 March exists in Berlin only in years when that day is not the change.
    const times = fireTimes({
      kind: 'cron',
      cron: '30 2 30 3 *',
      timezone: 'Europe/Berlin',
      gap: 'skip',
      fold: 'first',
    });
    // 2025-03-30 is the change: skipped, the next is 2026-03-30 02:30 CEST.
    assert.equal(times.next(at('2025-01-01T00:00:00Z')), at('2026-03-30T00:30:00Z'));
  });
});

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigError, loadConfig } from '../../config/env.js';

const byName = (env: Record<string, string>) =>
  Object.fromEntries(loadConfig(env).schedules.definitions.map((d) => [d.name, d]));

describe('periodic schedules from the environment', () => {
  it('has one schedule per cleanup job type, with defaults', () => {
    const schedules = byName({});
    assert.deepEqual(Object.keys(schedules).sort(), [
      'file_cleanup',
      'mfa_expiry_cleanup',
      'registration_expiry_cleanup',
      'relationship_consistency_check',
    ]);
    assert.deepEqual(schedules['mfa_expiry_cleanup'], {
      name: 'mfa_expiry_cleanup',
      jobType: 'mfa_expiry_cleanup',
      enabled: true,
      timing: { kind: 'interval', everyMs: 3_600_000 },
      allowOverlap: false,
      misfireGraceMs: 300_000,
    });
    assert.deepEqual(schedules['file_cleanup']?.timing, {
      kind: 'cron',
      cron: '0 3 * * *',
      timezone: 'UTC',
      gap: 'shift',
      fold: 'first',
    });
  });

  it('keeps the MFA interval under its old name', () => {
    const mfa = byName({ MFA_EXPIRY_JOB_INTERVAL_MINUTES: '15' })['mfa_expiry_cleanup'];
    assert.deepEqual(mfa?.timing, { kind: 'interval', everyMs: 900_000 });
  });

  it('reads a cron with its zone and policies, an interval, and the switches', () => {
    const schedules = byName({
      FILE_CLEANUP_JOB_CRON: '30 2 * * 0',
      FILE_CLEANUP_JOB_TIMEZONE: 'Europe/Berlin',
      FILE_CLEANUP_JOB_DST_GAP: 'skip',
      FILE_CLEANUP_JOB_DST_FOLD: 'both',
      FILE_CLEANUP_JOB_ALLOW_OVERLAP: 'true',
      FILE_CLEANUP_JOB_MISFIRE_GRACE_SECONDS: '30',
      REGISTRATION_EXPIRY_JOB_INTERVAL_MINUTES: '0.5',
      RELATIONSHIP_CONSISTENCY_JOB_ENABLED: 'false',
      MFA_EXPIRY_JOB_CRON: '*/10 * * * * *',
      SCHEDULE_TIMEZONE: 'America/New_York',
      MISFIRE_GRACE_SECONDS: '90',
    });
    assert.deepEqual(schedules['file_cleanup'], {
      name: 'file_cleanup',
      jobType: 'file_cleanup',
      enabled: true,
      timing: {
        kind: 'cron',
        cron: '30 2 * * 0',
        timezone: 'Europe/Berlin',
        gap: 'skip',
        fold: 'both',
      },
      allowOverlap: true,
      misfireGraceMs: 30_000,
    });
    assert.deepEqual(schedules['registration_expiry_cleanup']?.timing, {
      kind: 'interval',
      everyMs: 30_000,
    });
    assert.equal(schedules['relationship_consistency_check']?.enabled, false);
    assert.equal(schedules['relationship_consistency_check']?.misfireGraceMs, 90_000);
    assert.deepEqual(schedules['mfa_expiry_cleanup']?.timing, {
      kind: 'cron',
      cron: '*/10 * * * * *',
      timezone: 'America/New_York',
      gap: 'shift',
      fold: 'first',
    });
  });

  // [variable, value, what the message says after "VARIABLE: "]
  const bad: [string, string, RegExp][] = [
    ['FILE_CLEANUP_JOB_CRON', '61 * * * *', /.*minute.* \(got "61 \* \* \* \*"\)/],
    ['FILE_CLEANUP_JOB_CRON', 'daily', /.*five, six/],
    ['FILE_CLEANUP_JOB_CRON', '0 0 30 2 *', /the expression never matches/],
    ['FILE_CLEANUP_JOB_TIMEZONE', 'Europe/Atlantis', /expected an IANA time zone/],
    ['FILE_CLEANUP_JOB_TIMEZONE', '+02:00', /expected an IANA time zone/],
    ['SCHEDULE_TIMEZONE', 'Mars/Olympus', /expected an IANA time zone/],
    ['FILE_CLEANUP_JOB_DST_GAP', 'later', /expected one of skip, shift/],
    ['FILE_CLEANUP_JOB_DST_FOLD', 'twice', /expected one of first, last, both/],
    ['FILE_CLEANUP_JOB_ENABLED', 'perhaps', /expected true or false/],
    ['FILE_CLEANUP_JOB_ALLOW_OVERLAP', '2', /expected true or false/],
    ['REGISTRATION_EXPIRY_JOB_INTERVAL_MINUTES', 'hourly', /expected a number/],
    ['REGISTRATION_EXPIRY_JOB_INTERVAL_MINUTES', '0', /expected a number from 0.01/],
    ['FILE_CLEANUP_JOB_MISFIRE_GRACE_SECONDS', '-1', /expected a number/],
  ];
  for (const [variable, value, expected] of bad) {
    it(`refuses ${variable}=${JSON.stringify(value)}, naming the variable`, () => {
      assert.throws(
        () => loadConfig({ [variable]: value }),
        (err: unknown) =>
          err instanceof ConfigError &&
          new RegExp(`${variable}: ${expected.source}`).test(err.message),
      );
    });
  }

  it('refuses a cron and an interval for one schedule', () => {
    assert.throws(
      () => loadConfig({ MFA_EXPIRY_JOB_CRON: '0 * * * *', MFA_EXPIRY_JOB_INTERVAL_MINUTES: '5' }),
      /MFA_EXPIRY_JOB_CRON: set either it or MFA_EXPIRY_JOB_INTERVAL_MINUTES, not both/,
    );
  });

  it('names every bad schedule variable at once', () => {
    assert.throws(
      () => loadConfig({ FILE_CLEANUP_JOB_DST_GAP: 'x', RELATIONSHIP_CONSISTENCY_JOB_CRON: 'y' }),
      /FILE_CLEANUP_JOB_DST_GAP: .*; RELATIONSHIP_CONSISTENCY_JOB_CRON: /,
    );
  });
});

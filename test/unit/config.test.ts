import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigError, loadConfig } from '../../config/env.js';

describe('configuration from the environment', () => {
  it('works with nothing set, with defaults for a developer machine', () => {
    const config = loadConfig({});
    assert.equal(config.http.port, 8001);
    assert.equal(config.postgres.host, '127.0.0.1');
    assert.equal(config.postgres.schema, 'scheduler');
    assert.equal(config.rabbitmq.url, 'amqp://guest:guest@127.0.0.1:5672/');
    assert.equal(config.rabbitmq.commandsQueue, 'scheduler.commands');
    assert.equal(config.schedules.mfaExpiryIntervalMinutes, 60);
    assert.equal(config.http.apiToken, undefined);
  });

  it('falls back from a category setting to the DEFAULT_ one, and each overrides', () => {
    const config = loadConfig({
      DEFAULT_JOB_TIMEOUT_SECONDS: '120',
      DEFAULT_JOB_MAX_RETRIES: '4',
      REMINDER_JOB_MAX_RETRIES: '9',
      CLEANUP_JOB_MIN_RETRY_DELAY_SECONDS: '2.5',
    });
    assert.deepEqual(config.jobs.reminder, {
      timeoutSeconds: 120,
      maxAttempts: 9,
      minRetryDelaySeconds: 60,
      expiresAfterSeconds: undefined,
    });
    assert.deepEqual(config.jobs.cleanup, {
      timeoutSeconds: 120,
      maxAttempts: 4,
      minRetryDelaySeconds: 2.5,
      expiresAfterSeconds: undefined,
    });
  });

  it('reads the old APSCHEDULER misfire grace when the new name is not set', () => {
    assert.equal(
      loadConfig({ APSCHEDULER_MISFIRE_GRACE_SECONDS: '42' }).schedules.misfireGraceSeconds,
      42,
    );
    assert.equal(
      loadConfig({ APSCHEDULER_MISFIRE_GRACE_SECONDS: '42', MISFIRE_GRACE_SECONDS: '7' }).schedules
        .misfireGraceSeconds,
      7,
    );
  });

  const bad: [Record<string, string>, RegExp][] = [
    [{ PORT: 'eighty' }, /PORT: expected a whole number \(got "eighty"\)/],
    [{ PORT: '70000' }, /PORT: .*65535/],
    [
      { SCHEDULER_POSTGRES_SCHEMA: 'Robert"; drop' },
      /SCHEDULER_POSTGRES_SCHEMA: expected a lowercase SQL identifier/,
    ],
    [{ SCHEDULER_POSTGRES_SSL: 'maybe' }, /SCHEDULER_POSTGRES_SSL: expected true or false/],
    [{ RABBITMQ_URL: 'http://x' }, /RABBITMQ_URL: expected an amqp:\/\/ or amqps:\/\/ URL$/],
    [{ LOG_LEVEL: 'loud' }, /LOG_LEVEL:/],
    [{ DEFAULT_JOB_MAX_RETRIES: '0' }, /DEFAULT_JOB_MAX_RETRIES:/],
    [{ REMINDER_JOB_TIMEOUT_SECONDS: '-1' }, /REMINDER_JOB_TIMEOUT_SECONDS:/],
    [
      { MFA_EXPIRY_JOB_INTERVAL_MINUTES: 'hourly' },
      /MFA_EXPIRY_JOB_INTERVAL_MINUTES: expected a number/,
    ],
    [{ SCHEDULER_API_TOKEN: 'short' }, /SCHEDULER_API_TOKEN: must be at least 16 characters$/],
  ];
  for (const [env, expected] of bad) {
    it(`refuses ${JSON.stringify(env)}, naming the variable`, () => {
      assert.throws(
        () => loadConfig(env),
        (err: unknown) => {
          assert.ok(err instanceof ConfigError);
          assert.match(err.message, expected);
          return true;
        },
      );
    });
  }

  it('never echoes a secret it refuses', () => {
    assert.throws(
      () => loadConfig({ RABBITMQ_URL: 'ftp://user:hunter2@host' }),
      (err: Error) => !err.message.includes('hunter2'),
    );
  });

  it('names every bad variable at once', () => {
    assert.throws(() => loadConfig({ PORT: 'x', LOG_LEVEL: 'y' }), /PORT: .*; LOG_LEVEL: /);
  });
});

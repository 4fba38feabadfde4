import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import amqp from 'amqplib';
import { FakeBackend } from '../support/backend.js';
import {
  cleanUp,
  eventually,
  isolatedEnv,
  RABBITMQ_URL,
  startTestService,
  stopAllServices,
} from '../support/harness.js';

const EVERY_MS = 1200;

describe('the MFA expiry cleanup schedule', () => {
  const env = isolatedEnv({ MFA_EXPIRY_JOB_INTERVAL_MINUTES: '0.02', MISFIRE_GRACE_SECONDS: '60' });
  after(async () => {
    await stopAllServices();
    await cleanUp(env);
  });

  it('runs every interval; after a restart the tick missed while down runs late, once', async () => {
    // The backend listens before the first tick: a run whose message finds no queue stays
    // in flight, and the next tick would rightly be skipped.
    const connection = await amqp.connect(RABBITMQ_URL);
    const channel = await connection.createChannel();
    await channel.assertExchange(env['RABBITMQ_EXCHANGE'] ?? '', 'topic', { durable: true });
    await connection.close();
    const listener = await FakeBackend.start(env);
    const ticks = () =>
      listener.received
        .filter((e) => e.routingKey === 'jobs.execute.mfa_expiry_cleanup')
        .map((e) => Date.parse(e.body.scheduled_for as string))
        .sort((x, y) => x - y);
    try {
      const first = await startTestService(env);
      await eventually(() => ticks().length >= 2, 10_000, 'two ticks');
      const [a, b] = ticks() as [number, number];
      assert.equal(b - a, EVERY_MS, 'one tick every 0.02 minutes');
      // Stopped with no run in flight: one would make the missed tick a skipped one.
      await eventually(async () => {
        const { rows } = await first.pool.query(
          `select count(*)::int as open from "${env['SCHEDULER_POSTGRES_SCHEMA']}".jobs
           where state <> 'succeeded'`,
        );
        return rows[0].open === 0;
      });
      await first.stop();

      // Down for more than one interval: the tick that passed meanwhile is within the grace.
      await new Promise((resolve) => setTimeout(resolve, 1500));
      const restartedAt = Date.now();
      const missed = Math.floor(restartedAt / EVERY_MS) * EVERY_MS;
      const second = await startTestService(env);
      await eventually(() => ticks().includes(missed), 10_000, 'the missed tick, late');
      await eventually(() => ticks().some((t) => t > missed), 10_000, 'the next tick');
      await second.stop();

      const seen = ticks();
      assert.equal(new Set(seen).size, seen.length, `each tick once: ${seen.join(', ')}`);
      for (const t of seen)
        assert.equal(t % EVERY_MS, 0, 'ticks fall on multiples of the interval');
      const late = listener.received.find(
        (e) => Date.parse(e.body.scheduled_for as string) === missed,
      );
      assert.ok(late && late.receivedAt >= restartedAt, 'run by the second start, late');
    } finally {
      await listener.close();
    }
  });
});

import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { FakeBackend } from '../support/backend.js';
import { cleanUp, eventually, isolatedEnv, startTestService, stopAllServices } from '../support/harness.js';

describe('the MFA expiry cleanup schedule', () => {
  const env = isolatedEnv({ MFA_EXPIRY_JOB_INTERVAL_MINUTES: '0.02', MISFIRE_GRACE_SECONDS: '60' });
  after(async () => {
    await stopAllServices();
    await cleanUp(env);
  });

  it('runs every interval from the first start, and a restart does not run a tick twice', async () => {
    const first = await startTestService(env);
    const listener = await FakeBackend.start(env);
    const ticks = () =>
      listener.received
        .filter((e) => e.routingKey === 'jobs.execute.mfa_expiry_cleanup')
        .map((e) => e.body.scheduled_for as string);
    try {
      await eventually(() => ticks().length >= 2, 10_000, 'two ticks');
      // Sorted: the first tick may go out late, published again once the backend bound its queue.
      const [a, b] = ticks().map(Date.parse).sort((x, y) => x - y) as [number, number];
      assert.equal(b - a, 1200, 'one tick every 0.02 minutes');
      await first.stop();

      // The latest tick is within the misfire grace; the new start runs it only if it never ran.
      const second = await startTestService(env);
      await eventually(() => ticks().length >= 4, 10_000, 'two more ticks');
      await second.stop();

      const seen = ticks();
      assert.equal(new Set(seen).size, seen.length, `each tick once: ${seen.join(', ')}`);
      const instants = seen.map(Date.parse).sort((x, y) => x - y);
      for (const t of instants) assert.equal(t % 1200, 0, 'ticks fall on multiples of the interval');
    } finally {
      await listener.close();
    }
  });
});

import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { FakeBackend } from '../support/backend.js';
import {
  cleanUp,
  getJson,
  isolatedEnv,
  startTestService,
  stopAllServices,
} from '../support/harness.js';

const DAY = 86_400_000;

describe('jobs far in the future', () => {
  const env = isolatedEnv({ HORIZON_MINUTES: '10080' });
  after(async () => {
    await stopAllServices();
    await cleanUp(env);
  });

  it('jobs due in 30, 90 and 400 days keep their exact instant through restarts, and none fires', async () => {
    let sut = await startTestService(env);
    const backend = await FakeBackend.start(env);
    try {
      const base = Math.floor(Date.now() / 1000) * 1000 + 123;
      const due: Record<string, number> = {};
      for (const days of [3, 30, 90, 400]) {
        const at = base + days * DAY;
        const answer = await backend.command('jobs.schedule', {
          job_type: 'payment_reminder',
          scheduled_for: new Date(at).toISOString(),
        });
        due[answer.job_id] = at;
      }
      for (let restart = 0; restart < 2; restart += 1) {
        await sut.stop();
        sut = await startTestService(env);
        const restored = sut.logs.find('restored waiting jobs')[0]?.['restored'];
        assert.equal(restored, 1, 'only the job within the 7-day horizon is live');
        await new Promise((r) => setTimeout(r, 300));
        for (const [id, at] of Object.entries(due)) {
          const view = (await getJson(`${sut.baseUrl}/jobs/${id}`)).body;
          assert.equal(view.state, 'pending');
          assert.equal(view.scheduled_for, new Date(at).toISOString());
          assert.equal(view.next_at, new Date(at).toISOString());
        }
      }
      assert.equal(
        backend.received.filter((e) => e.body.job_type === 'payment_reminder').length,
        0,
      );
    } finally {
      await backend.close();
    }
  });
});

import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { FakeBackend } from '../support/backend.js';
import {
  cleanUp,
  eventually,
  getJson,
  isolatedEnv,
  startTestService,
  stopAllServices,
  testPool,
  type ServiceUnderTest,
} from '../support/harness.js';

const view = async (sut: ServiceUnderTest, id: string) =>
  (await getJson(`${sut.baseUrl}/jobs/${id}`)).body;

describe('restoring jobs from their snapshots', () => {
  const envs: Record<string, string>[] = [];
  after(async () => {
    await stopAllServices();
    for (const env of envs) await cleanUp(env);
  });

  it('a snapshot from an older machine version without a migration or naming an unknown state marks that one job; a newer one is left alone; the others run', async () => {
    const env = isolatedEnv();
    envs.push(env);
    const schema = env['SCHEDULER_POSTGRES_SCHEMA'];
    const first = await startTestService(env);
    const backend = await FakeBackend.start(env);
    const ids: string[] = [];
    for (let i = 0; i < 4; i += 1) {
      ids.push(
        (await backend.command('jobs.schedule', { job_type: 'file_cleanup', delay_seconds: 2 }))
          .job_id,
      );
    }
    await first.stop();
    const [otherVersion, unknownState, healthy, newer] = ids as [string, string, string, string];

    const admin = testPool();
    try {
      await admin.query(`update "${schema}".jobs set machine_version = 0 where id = $1`, [
        otherVersion,
      ]);
      await admin.query(`update "${schema}".jobs set machine_version = 99 where id = $1`, [newer]);
      await admin.query(
        `update "${schema}".jobs set snapshot = jsonb_set(snapshot, '{value}', '"sleeping"') where id = $1`,
        [unknownState],
      );
    } finally {
      await admin.end();
    }

    const second = await startTestService(env);
    try {
      await eventually(
        async () => (await view(second, healthy)).state === 'succeeded',
        10_000,
        'the healthy job',
      );
      const versioned = await view(second, otherVersion);
      assert.equal(versioned.state, 'pending');
      assert.match(versioned.last_error, /job machine version 0; this service runs version 1/);
      const fromNewer = await view(second, newer);
      assert.equal(fromNewer.state, 'pending');
      assert.equal(fromNewer.last_error, null, 'not marked: a newer release may take it');
      assert.equal(backend.executesOf(newer).length, 0);
      assert.ok(
        second.logs.find(/written by a newer job machine/).some((l) => l['job_id'] === newer),
      );
      const broken = await view(second, unknownState);
      assert.match(broken.last_error, /unknown state "sleeping"/);
      const { rows } = await second.pool.query(
        `select id from "${schema}".jobs where restore_error is not null order by id`,
      );
      assert.deepEqual(rows.map((r) => r.id).sort(), [otherVersion, unknownState].sort());
      assert.equal(second.logs.find('job cannot be restored; marked and left as it is').length, 2);
      assert.equal((await getJson(`${second.baseUrl}/health/ready`)).status, 200);
      assert.equal(backend.executesOf(otherVersion).length, 0);
    } finally {
      await backend.close();
      await second.stop();
    }
  });

  it('a reply for a job with no live actor (its deadline beyond the horizon) is applied to its persisted state', async () => {
    const env = isolatedEnv({ HORIZON_MINUTES: '0.1' });
    envs.push(env);
    const first = await startTestService(env);
    const backend = await FakeBackend.start(env);
    backend.behaviour = () => ({ kind: 'silent' });
    const { job_id: id } = await backend.command('jobs.schedule', {
      job_type: 'lesson_reminder',
      delay_seconds: 0,
      timeout_seconds: 3600,
    });
    await eventually(
      async () => (await view(first, id)).state === 'awaiting-ack',
      5000,
      'awaiting-ack',
    );
    await first.stop();

    const second = await startTestService(env);
    try {
      const restored = second.logs.find('restored waiting jobs')[0];
      assert.equal(restored?.['restored'], 0, 'a deadline an hour away is beyond a 6 s horizon');
      await backend.publish('jobs.completed', {
        event_type: 'jobs.completed',
        job_id: id,
        completed_at: new Date().toISOString(),
        result: { sent: true },
        attempt: 1,
      });
      const done = await eventually(
        async () => {
          const v = await view(second, id);
          return v.state === 'succeeded' ? v : undefined;
        },
        10_000,
        'the reply to be applied',
      );
      assert.deepEqual(done.result, { sent: true });
    } finally {
      await backend.close();
      await second.stop();
    }
  });
});

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
} from '../support/harness.js';

describe('a cutoff (expires_at): too late to be useful', () => {
  const envs: Record<string, string>[] = [];
  after(async () => {
    await stopAllServices();
    for (const env of envs) await cleanUp(env);
  });

  it('a reminder whose cutoff passed while the service was down ends dead, expired, unsent', async () => {
    const env = isolatedEnv();
    envs.push(env);
    const first = await startTestService(env);
    const backend = await FakeBackend.start(env);
    try {
      const start = Date.now();
      const { job_id: id } = await backend.command('jobs.schedule', {
        job_type: 'lesson_reminder',
        scheduled_for: new Date(start + 1500).toISOString(),
        expires_at: new Date(start + 2500).toISOString(),
      });
      await first.stop();
      await new Promise((r) => setTimeout(r, Math.max(0, start + 3000 - Date.now())));

      const second = await startTestService(env);
      const view = await eventually(
        async () => {
          const v = (await getJson(`${second.baseUrl}/jobs/${id}`)).body;
          return v.state === 'dead' ? v : undefined;
        },
        5000,
        'the job to expire',
      );
      assert.equal(view.last_error, 'expired');
      assert.equal(view.attempt, 0);
      assert.equal(backend.executesOf(id).length, 0, 'never sent late');
      const { rows } = await second.pool.query(
        `select from_state, to_state, event from "${env['SCHEDULER_POSTGRES_SCHEMA']}".job_transitions
         where job_id = $1 order by id`,
        [id],
      );
      assert.deepEqual(rows.at(-1), { from_state: 'pending', to_state: 'dead', event: 'due' });
    } finally {
      await backend.close();
    }
  });

  it('a reminder the backend keeps failing ends dead, expired, once its next retry would be late', async () => {
    const env = isolatedEnv({ REMINDER_JOB_MIN_RETRY_DELAY_SECONDS: '0.3' });
    envs.push(env);
    const sut = await startTestService(env);
    const backend = await FakeBackend.start(env);
    backend.behaviour = () => ({ kind: 'fail', error: 'push service down' });
    try {
      const { job_id: id } = await backend.command('jobs.schedule', {
        job_type: 'lesson_reminder',
        delay_seconds: 0,
        max_attempts: 50,
        expires_at: new Date(Date.now() + 1500).toISOString(),
      });
      const view = await eventually(
        async () => {
          const v = (await getJson(`${sut.baseUrl}/jobs/${id}`)).body;
          return v.state === 'dead' ? v : undefined;
        },
        8000,
        'the job to expire',
      );
      assert.equal(view.last_error, 'expired');
      assert.ok(view.attempt >= 1 && view.attempt < 50, `stopped after ${view.attempt} attempts`);
      const sentAfterCutoff = backend
        .executesOf(id)
        .filter((e) => Date.parse(e.body.sent_at) > Date.parse(view.expires_at));
      assert.deepEqual(sentAfterCutoff, []);
    } finally {
      await backend.close();
    }
  });

  it('a category default cutoff applies when a job gives none', async () => {
    const env = isolatedEnv({ REMINDER_JOB_EXPIRES_AFTER_SECONDS: '900' });
    envs.push(env);
    const sut = await startTestService(env);
    const backend = await FakeBackend.start(env);
    try {
      const at = Date.now() + 3_600_000;
      const { job_id: id } = await backend.command('jobs.schedule', {
        job_type: 'homework_reminder',
        scheduled_for: new Date(at).toISOString(),
      });
      const view = (await getJson(`${sut.baseUrl}/jobs/${id}`)).body;
      assert.equal(Date.parse(view.expires_at), at + 900_000);
      const cleanup = await backend.command('jobs.schedule', {
        job_type: 'file_cleanup',
        scheduled_for: new Date(at).toISOString(),
      });
      assert.equal((await getJson(`${sut.baseUrl}/jobs/${cleanup.job_id}`)).body.expires_at, null);
    } finally {
      await backend.close();
    }
  });
});

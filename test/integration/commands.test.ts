import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { FakeBackend } from '../support/backend.js';
import {
  cleanUp,
  eventually,
  getJson,
  isolatedEnv,
  startTestService,
  stopAllServices,
  uuid,
  type ServiceUnderTest,
} from '../support/harness.js';

const HOUR = 3_600_000;

describe('scheduling commands over RabbitMQ', () => {
  const env = isolatedEnv({
    REMINDER_JOB_MIN_RETRY_DELAY_SECONDS: '30',
    REMINDER_JOB_TIMEOUT_SECONDS: '60',
  });
  let sut: ServiceUnderTest;
  let backend: FakeBackend;
  const view = async (id: string) => (await getJson(`${sut.baseUrl}/jobs/${id}`)).body;

  before(async () => {
    sut = await startTestService(env);
    backend = await FakeBackend.start(env);
  });
  after(async () => {
    await backend?.close();
    await stopAllServices();
    await cleanUp(env);
  });

  it('a subject reschedule moves every anchored pending job by its own offset, cutoff included, in one message', async () => {
    const subject = `lesson:${uuid()}`;
    const lesson = Date.now() + 48 * HOUR;
    const anchorAt = new Date(lesson).toISOString();
    const dayBefore = await backend.command('jobs.schedule', {
      job_type: 'lesson_reminder',
      subject,
      anchor_at: anchorAt,
      offset_seconds: -86_400,
      expires_at: new Date(lesson).toISOString(),
    });
    const hourBefore = await backend.command('jobs.schedule', {
      job_type: 'lesson_reminder',
      subject,
      anchor_at: anchorAt,
      offset_seconds: -3600,
    });
    const fixed = await backend.command('jobs.schedule', {
      job_type: 'homework_reminder',
      subject,
      scheduled_for: new Date(lesson + HOUR).toISOString(),
    });
    assert.equal(Date.parse((await view(dayBefore.job_id)).scheduled_for), lesson - 24 * HOUR);

    const moved = lesson + 3 * HOUR;
    const answer = await backend.command('jobs.reschedule', {
      subject,
      anchor_at: new Date(moved).toISOString(),
    });
    assert.equal(answer.ok, true);
    assert.equal(answer.count, 2);
    assert.deepEqual([...answer.job_ids].sort(), [dayBefore.job_id, hourBefore.job_id].sort());

    const a = await view(dayBefore.job_id);
    assert.equal(Date.parse(a.scheduled_for), moved - 24 * HOUR);
    assert.equal(Date.parse(a.next_at), moved - 24 * HOUR);
    assert.equal(Date.parse(a.expires_at), moved, 'the cutoff moves by the same shift');
    assert.equal(Date.parse((await view(hourBefore.job_id)).scheduled_for), moved - HOUR);
    assert.equal(
      Date.parse((await view(fixed.job_id)).scheduled_for),
      lesson + HOUR,
      'a job not timed by anchor stays',
    );

    const nobody = await backend.command('jobs.reschedule', {
      subject: `lesson:${uuid()}`,
      anchor_at: new Date(moved).toISOString(),
    });
    assert.deepEqual(nobody, { ok: true, job_ids: [], count: 0 });
  });

  it('a subject cancel cancels every waiting job of it and nothing else', async () => {
    const subject = `lesson:${uuid()}`;
    const ids: string[] = [];
    for (const offset of [-86_400, -3600, -600]) {
      const answer = await backend.command('jobs.schedule', {
        job_type: 'lesson_reminder',
        subject,
        anchor_at: new Date(Date.now() + 48 * HOUR).toISOString(),
        offset_seconds: offset,
      });
      ids.push(answer.job_id);
    }
    const other = await backend.command('jobs.schedule', {
      job_type: 'lesson_reminder',
      subject: `lesson:${uuid()}`,
      delay_seconds: 3600,
    });
    const answer = await backend.command('jobs.cancel', { subject });
    assert.equal(answer.count, 3);
    assert.deepEqual([...answer.job_ids].sort(), [...ids].sort());
    for (const id of ids) assert.equal((await view(id)).state, 'cancelled');
    assert.equal((await view(other.job_id)).state, 'pending');
    assert.deepEqual(await backend.command('jobs.cancel', { subject }), {
      ok: true,
      job_ids: [],
      count: 0,
    });
  });

  it('a job cancelled while awaiting the backend stays cancelled when the late reply comes', async () => {
    backend.behaviour = () => ({ kind: 'silent' });
    const { job_id: id } = await backend.command('jobs.schedule', {
      job_type: 'payment_reminder',
      delay_seconds: 0,
    });
    await eventually(async () => (await view(id)).state === 'awaiting-ack', 5000, 'awaiting-ack');
    assert.deepEqual(await backend.command('jobs.cancel', { job_id: id }), {
      ok: true,
      job_id: id,
      state: 'cancelled',
    });
    await backend.publish('jobs.completed', {
      event_type: 'jobs.completed',
      job_id: id,
      completed_at: new Date().toISOString(),
      attempt: 1,
    });
    await eventually(
      () => sut.logs.find('reply changed nothing').some((l) => l['job_id'] === id),
      5000,
      'the late reply to be ignored',
    );
    assert.equal((await view(id)).state, 'cancelled');
    assert.deepEqual(await backend.command('jobs.cancel', { job_id: id }), {
      ok: true,
      job_id: id,
      state: 'cancelled',
    });
    backend.behaviour = () => ({ kind: 'complete' });
  });

  it('a retrying job can be rescheduled and cancelled by idempotency_key; a finished one cannot', async () => {
    backend.behaviour = (e) => (e.body.attempt === 1 ? { kind: 'fail' } : { kind: 'complete' });
    const key = `pay-${uuid()}`;
    const { job_id: id } = await backend.command('jobs.schedule', {
      job_type: 'payment_reminder',
      delay_seconds: 0,
      idempotency_key: key,
    });
    await eventually(async () => (await view(id)).state === 'retrying', 5000, 'retrying');
    const soon = await backend.command('jobs.reschedule', {
      idempotency_key: key,
      delay_seconds: 0.2,
    });
    assert.deepEqual(soon, { ok: true, job_id: id, state: 'retrying' });
    const done = await eventually(
      async () => {
        const v = await view(id);
        return v.state === 'succeeded' ? v : undefined;
      },
      5000,
      'the moved retry to run',
    );
    assert.equal(done.attempt, 2);

    const late = await backend.command('jobs.reschedule', { job_id: id, delay_seconds: 5 });
    assert.equal(late.ok, false);
    assert.match(late.error, /is succeeded/);
    const finished = await backend.command('jobs.cancel', { idempotency_key: key });
    assert.equal(finished.ok, false);
    assert.match(finished.error, /is succeeded; cannot cancel/);
    backend.behaviour = () => ({ kind: 'complete' });
  });
});

describe('idempotency across two service instances', () => {
  const env = isolatedEnv();
  after(async () => {
    await stopAllServices();
    await cleanUp(env);
  });

  it('the same idempotency_key sent many times at once to two instances creates one job', async () => {
    const a = await startTestService(env);
    await startTestService(env);
    const backend = await FakeBackend.start(env);
    try {
      const key = `race-${uuid()}`;
      const body = {
        job_type: 'telegram_link_reminder',
        delay_seconds: 3600,
        idempotency_key: key,
      };
      const answers = await Promise.all(
        Array.from({ length: 20 }, () => backend.command('jobs.schedule', body)),
      );
      const ids = new Set(answers.map((x) => x.job_id));
      assert.equal(ids.size, 1, 'one job for the key');
      assert.equal(answers.filter((x) => x.duplicate !== true).length, 1, 'one creation');
      const { rows } = await a.pool.query(
        `select count(*)::int as n from "${env['SCHEDULER_POSTGRES_SCHEMA']}".jobs
         where idempotency_key = $1`,
        [key],
      );
      assert.equal(rows[0].n, 1);
    } finally {
      await backend.close();
    }
  });
});

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { FakeBackend } from '../support/backend.js';
import {
  cleanUp,
  eventually,
  getJson,
  isolatedEnv,
  startTestService,
  uuid,
  type ServiceUnderTest,
} from '../support/harness.js';

const ISO_WITH_OFFSET = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/;

describe('a job from command to reply, against PostgreSQL and RabbitMQ', () => {
  const env = isolatedEnv({
    REMINDER_JOB_TIMEOUT_SECONDS: '1',
    REMINDER_JOB_MIN_RETRY_DELAY_SECONDS: '0.2',
    REMINDER_JOB_MAX_RETRIES: '3',
    PUBLISH_RETRY_DELAY_SECONDS: '0.1',
  });
  let sut: ServiceUnderTest;
  let backend: FakeBackend;

  before(async () => {
    sut = await startTestService(env);
    backend = await FakeBackend.start(env, {
      bindings: ['jobs.execute.lesson_reminder', 'jobs.execute.homework_reminder'],
      deadLetters: true,
    });
  });

  after(async () => {
    await backend?.close();
    await sut?.stop();
    await cleanUp(env);
  });

  const job = async (id: string) => (await getJson(`${sut.baseUrl}/jobs/${id}`)).body;
  const settled = (id: string, state: string, timeoutMs = 10_000) =>
    eventually(
      async () => {
        const view = await job(id);
        return view.state === state ? view : undefined;
      },
      timeoutMs,
      `job ${id} to be ${state}`,
    );

  it('jobs.schedule creates a job whose execute message has the exact fields of the contract', async () => {
    const scheduledFor = new Date(Date.now() + 300).toISOString();
    const reply = await backend.command('jobs.schedule', {
      job_type: 'lesson_reminder',
      scheduled_for: scheduledFor,
      metadata: { lesson_id: 42 },
    });
    assert.equal(reply.ok, true);
    assert.equal(reply.state, 'pending');
    const id: string = reply.job_id;

    const [execute] = await backend.waitForExecutes(id, 1);
    assert.ok(execute);
    assert.equal(execute.routingKey, 'jobs.execute.lesson_reminder');
    assert.deepEqual(Object.keys(execute.body).sort(), [
      'attempt',
      'event_type',
      'job_id',
      'job_type',
      'max_attempts',
      'metadata',
      'scheduled_for',
      'sent_at',
      'timeout_seconds',
    ]);
    assert.equal(execute.body.event_type, 'jobs.execute');
    assert.equal(execute.body.job_id, id);
    assert.equal(execute.body.job_type, 'lesson_reminder');
    assert.equal(Date.parse(execute.body.scheduled_for), Date.parse(scheduledFor));
    assert.match(execute.body.scheduled_for, ISO_WITH_OFFSET);
    assert.match(execute.body.sent_at, ISO_WITH_OFFSET);
    assert.ok(Date.parse(execute.body.sent_at) >= Date.parse(scheduledFor), 'not sent early');
    assert.equal(execute.body.timeout_seconds, 1);
    assert.deepEqual(execute.body.metadata, { lesson_id: 42 });
    assert.equal(execute.body.attempt, 1);
    assert.equal(execute.body.max_attempts, 3);
    assert.equal(execute.properties.messageId, `${id}:1`);
    assert.equal(execute.properties.correlationId, id);
    assert.equal(execute.properties.type, 'jobs.execute');
    assert.equal(execute.properties.contentType, 'application/json');
    assert.equal(execute.properties.deliveryMode, 2);
    assert.equal(typeof execute.properties.timestamp, 'number');

    const view = await settled(id, 'succeeded');
    assert.deepEqual(view.result, { done: true });
    assert.equal(view.attempt, 1);
    assert.equal(view.next_at, null);
    assert.match(view.finished_at, ISO_WITH_OFFSET);

    const { rows } = await sut.pool.query(
      `select from_state, to_state, event, attempt
       from "${env['SCHEDULER_POSTGRES_SCHEMA']}".job_transitions where job_id = $1 order by id`,
      [id],
    );
    assert.deepEqual(
      rows.map((r) => `${r.from_state ?? '-'}>${r.to_state}:${r.event}`),
      [
        '->pending:jobs.schedule',
        'pending>dispatched:due',
        'dispatched>awaiting-ack:publish.confirmed',
        'awaiting-ack>succeeded:jobs.completed',
      ],
    );
    assert.equal(
      sut.logs.find('job finished').some((l) => l['job_id'] === id),
      true,
    );
  });

  it('a failure is retried after the backoff as attempt 2 with a new message_id', async () => {
    backend.behaviour = (e) =>
      e.body.attempt === 1 ? { kind: 'fail', error: 'smtp down' } : { kind: 'complete' };
    const { job_id: id } = await backend.command('jobs.schedule', {
      job_type: 'lesson_reminder',
      delay_seconds: 0,
    });
    const view = await settled(id, 'succeeded');
    const executes = backend.executesOf(id);
    assert.deepEqual(
      executes.map((e) => e.properties.messageId),
      [`${id}:1`, `${id}:2`],
    );
    const gap = (executes[1]?.receivedAt ?? 0) - (executes[0]?.receivedAt ?? 0);
    assert.ok(gap >= 200, `retry waited the minimum delay (${gap} ms)`);
    assert.equal(view.attempt, 2);
    backend.behaviour = () => ({ kind: 'complete' });
  });

  it('should_retry false ends the job dead whatever attempts remain', async () => {
    backend.behaviour = () => ({ kind: 'fail', error: 'user deleted', shouldRetry: false });
    const { job_id: id } = await backend.command('jobs.schedule', {
      job_type: 'lesson_reminder',
      delay_seconds: 0,
    });
    const view = await settled(id, 'dead');
    assert.equal(view.attempt, 1);
    assert.equal(view.last_error, 'user deleted');
    backend.behaviour = () => ({ kind: 'complete' });
  });

  it('a backend that never answers times the attempts out until the job is dead', async () => {
    backend.behaviour = () => ({ kind: 'silent' });
    const { job_id: id } = await backend.command('jobs.schedule', {
      job_type: 'lesson_reminder',
      delay_seconds: 0,
      max_attempts: 2,
    });
    const view = await settled(id, 'dead', 15_000);
    assert.equal(view.attempt, 2);
    assert.match(view.last_error, /no reply within 1 s/);
    assert.equal(backend.executesOf(id).length, 2);
    backend.behaviour = () => ({ kind: 'complete' });
  });

  it('an unroutable publish spends no attempt: the same message_id goes out once a queue is bound', async () => {
    const { job_id: id } = await backend.command('jobs.schedule', {
      job_type: 'payment_reminder',
      delay_seconds: 0,
    });
    await eventually(
      () =>
        sut.logs
          .find('publish failed; the attempt will be published again')
          .some((l) => l['job_id'] === id),
      5000,
      'a returned publish',
    );
    const retrying = await job(id);
    assert.equal(retrying.attempt, 1);
    assert.ok(['retrying', 'dispatched'].includes(retrying.state), retrying.state);

    await backend.bind('jobs.execute.payment_reminder');
    await settled(id, 'succeeded', 15_000);
    assert.deepEqual(
      backend.executesOf(id).map((e) => e.properties.messageId),
      [`${id}:1`],
    );
  });

  it('a repeated idempotency_key or job_id creates nothing new and names the first job', async () => {
    const key = `lesson-7-${uuid()}`;
    const body = { job_type: 'homework_reminder', delay_seconds: 3600, idempotency_key: key };
    const first = await backend.command('jobs.schedule', body);
    const second = await backend.command('jobs.schedule', { ...body, delay_seconds: 10 });
    assert.equal(first.ok, true);
    assert.equal(first.duplicate, undefined);
    assert.deepEqual(second, { ok: true, job_id: first.job_id, state: 'pending', duplicate: true });

    const jobId = uuid();
    const a = await backend.command('jobs.schedule', {
      ...body,
      idempotency_key: undefined,
      job_id: jobId,
    });
    const b = await backend.command('jobs.schedule', {
      ...body,
      idempotency_key: undefined,
      job_id: jobId,
    });
    assert.equal(a.job_id, jobId);
    assert.deepEqual(b, { ok: true, job_id: jobId, state: 'pending', duplicate: true });

    const conflict = await backend.command('jobs.schedule', { ...body, job_id: jobId });
    assert.equal(conflict.ok, false);
    assert.match(conflict.error, /idempotency_key names job .* but job_id names job/);
  });

  it('per-job timeout, attempts and retry delay override the category defaults', async () => {
    backend.behaviour = () => ({ kind: 'silent' });
    const { job_id: id } = await backend.command('jobs.schedule', {
      job_type: 'homework_reminder',
      delay_seconds: 0,
      timeout_seconds: 30,
      max_attempts: 7,
      min_retry_delay_seconds: 5,
    });
    const [execute] = await backend.waitForExecutes(id, 1);
    assert.equal(execute?.body.timeout_seconds, 30);
    assert.equal(execute?.body.max_attempts, 7);
    backend.behaviour = () => ({ kind: 'complete' });
    await backend.publish('jobs.completed', {
      event_type: 'jobs.completed',
      job_id: id,
      completed_at: new Date().toISOString(),
    });
    await settled(id, 'succeeded');
  });

  it('a reply for an attempt never sent, and a failure for a stale attempt, change nothing', async () => {
    backend.behaviour = () => ({ kind: 'silent' });
    const { job_id: id } = await backend.command('jobs.schedule', {
      job_type: 'lesson_reminder',
      delay_seconds: 0,
      timeout_seconds: 60,
    });
    await backend.waitForExecutes(id, 1);
    await settled(id, 'awaiting-ack');
    const now = new Date().toISOString();
    await backend.publish('jobs.completed', {
      event_type: 'jobs.completed',
      job_id: id,
      completed_at: now,
      attempt: 5,
    });
    await backend.publish('jobs.failed', {
      event_type: 'jobs.failed',
      job_id: id,
      failed_at: now,
      error_message: 'x',
      attempt: 9,
    });
    await eventually(
      () => sut.logs.find('reply changed nothing').filter((l) => l['job_id'] === id).length === 2,
      5000,
      'two ignored replies',
    );
    assert.equal((await job(id)).state, 'awaiting-ack');
    await backend.publish('jobs.completed', {
      event_type: 'jobs.completed',
      job_id: id,
      completed_at: now,
      attempt: 1,
    });
    await settled(id, 'succeeded');
    await backend.publish('jobs.completed', {
      event_type: 'jobs.completed',
      job_id: id,
      completed_at: now,
    });
    await eventually(
      () =>
        sut.logs
          .find('reply changed nothing')
          .some((l) => l['job_id'] === id && /already succeeded/.test(String(l['reason']))),
      5000,
      'a duplicate reply warning',
    );
    backend.behaviour = () => ({ kind: 'complete' });
  });

  it('a reply for an unknown job is acknowledged with a warning, not dead-lettered', async () => {
    const ghost = uuid();
    await backend.publish('jobs.completed', {
      event_type: 'jobs.completed',
      job_id: ghost,
      completed_at: new Date().toISOString(),
    });
    await eventually(
      () => sut.logs.find(/unknown job/).some((l) => l['job_id'] === ghost),
      5000,
      'an unknown-job warning',
    );
    assert.equal(
      backend.deadLetters.some((d) => d.content.includes(ghost)),
      false,
    );
  });

  it('GET /jobs/:id answers 400 for an id that is not a UUID and 404 for an unknown one', async () => {
    const bad = await getJson(`${sut.baseUrl}/jobs/not-a-uuid`);
    assert.equal(bad.status, 400);
    assert.deepEqual(bad.body.error.field, 'job_id');
    const missing = await getJson(`${sut.baseUrl}/jobs/${uuid()}`);
    assert.equal(missing.status, 404);
    assert.equal(missing.body.error.code, 'not_found');
  });
});

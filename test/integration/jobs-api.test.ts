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

async function send(
  method: string,
  url: string,
  body?: unknown,
): Promise<{ status: number; body: any }> {
  const response = await fetch(url, {
    method,
    headers: { 'content-type': 'application/json' },
    ...(body !== undefined && { body: typeof body === 'string' ? body : JSON.stringify(body) }),
  });
  return { status: response.status, body: await response.json() };
}

describe('the jobs API over HTTP', () => {
  const env = isolatedEnv({
    MESSAGE_MAX_BYTES: '4096',
    REMINDER_JOB_MIN_RETRY_DELAY_SECONDS: '0.1',
    REMINDER_JOB_MAX_RETRIES: '1',
  });
  let sut: ServiceUnderTest;
  let backend: FakeBackend;
  const url = (path: string) => `${sut.baseUrl}${path}`;

  before(async () => {
    sut = await startTestService(env);
    backend = await FakeBackend.start(env);
  });
  after(async () => {
    await backend?.close();
    await stopAllServices();
    await cleanUp(env);
  });

  const settled = (id: string, state: string) =>
    eventually(
      async () => {
        const view = (await getJson(url(`/jobs/${id}`))).body;
        return view.state === state ? view : undefined;
      },
      10_000,
      `job ${id} ${state}`,
    );

  it('POST /jobs creates a job (201 with the view), and a duplicate answers 200 with the same job', async () => {
    const body = {
      job_type: 'homework_reminder',
      delay_seconds: 3600,
      idempotency_key: `hw-${uuid()}`,
      subject: 'homework:9',
      metadata: { homework_id: 9 },
    };
    const created = await send('POST', url('/jobs'), body);
    assert.equal(created.status, 201);
    assert.deepEqual(Object.keys(created.body).sort(), [
      'attempt',
      'created_at',
      'expires_at',
      'finished_at',
      'job_id',
      'job_type',
      'last_error',
      'max_attempts',
      'metadata',
      'next_at',
      'result',
      'scheduled_for',
      'state',
      'subject',
      'updated_at',
    ]);
    assert.equal(created.body.state, 'pending');
    assert.equal(created.body.subject, 'homework:9');
    assert.equal(created.body.next_at, created.body.scheduled_for);
    const again = await send('POST', url('/jobs'), body);
    assert.equal(again.status, 200);
    assert.equal(again.body.job_id, created.body.job_id);
  });

  it('POST /jobs answers 400 naming the field, and 413 for a body over the limit', async () => {
    const naive = await send('POST', url('/jobs'), {
      job_type: 'lesson_reminder',
      scheduled_for: '2031-01-01T10:00:00',
    });
    assert.equal(naive.status, 400);
    assert.equal(naive.body.error.field, 'scheduled_for');
    const unknown = await send('POST', url('/jobs'), { job_type: 'nope', delay_seconds: 1 });
    assert.equal(unknown.status, 400);
    assert.equal(unknown.body.error.field, 'job_type');
    const notJson = await send('POST', url('/jobs'), '{"job_type":');
    assert.equal(notJson.status, 400);
    assert.equal(notJson.body.error.code, 'invalid_json');
    const big = await send('POST', url('/jobs'), {
      job_type: 'lesson_reminder',
      pad: 'x'.repeat(5000),
    });
    assert.equal(big.status, 413);
    assert.equal(big.body.error.code, 'payload_too_large');
  });

  it('PATCH /jobs/:id moves a pending job; a finished one is refused with 409', async () => {
    const created = await send('POST', url('/jobs'), {
      job_type: 'lesson_reminder',
      delay_seconds: 600,
    });
    const target = new Date(Date.now() + 7_200_000).toISOString();
    const moved = await send('PATCH', url(`/jobs/${created.body.job_id}`), {
      scheduled_for: target,
    });
    assert.equal(moved.status, 200);
    assert.equal(Date.parse(moved.body.next_at), Date.parse(target));
    assert.equal(Date.parse(moved.body.scheduled_for), Date.parse(target));

    const done = await send('POST', url('/jobs'), {
      job_type: 'lesson_reminder',
      delay_seconds: 0,
    });
    await settled(done.body.job_id, 'succeeded');
    const refused = await send('PATCH', url(`/jobs/${done.body.job_id}`), { delay_seconds: 10 });
    assert.equal(refused.status, 409);
    assert.match(refused.body.error.message, /is succeeded; only pending or retrying/);
    const bad = await send('PATCH', url(`/jobs/${created.body.job_id}`), { delay_seconds: -1 });
    assert.equal(bad.status, 400);
    assert.equal(bad.body.error.field, 'delay_seconds');
  });

  it('DELETE /jobs/:id cancels, again is 200, a finished job is 409, an unknown one 404', async () => {
    const created = await send('POST', url('/jobs'), {
      job_type: 'payment_reminder',
      delay_seconds: 600,
    });
    const id = created.body.job_id;
    const cancelled = await send('DELETE', url(`/jobs/${id}`));
    assert.equal(cancelled.status, 200);
    assert.equal(cancelled.body.state, 'cancelled');
    assert.equal((await send('DELETE', url(`/jobs/${id}`))).status, 200);
    assert.equal((await send('DELETE', url(`/jobs/${uuid()}`))).status, 404);
    assert.equal((await send('DELETE', url('/jobs/xyz'))).status, 400);
    const done = await send('POST', url('/jobs'), {
      job_type: 'payment_reminder',
      delay_seconds: 0,
    });
    await settled(done.body.job_id, 'succeeded');
    assert.equal((await send('DELETE', url(`/jobs/${done.body.job_id}`))).status, 409);
  });

  it('POST /jobs/:id/retry restarts a dead job with a fresh budget, attempts numbering on', async () => {
    backend.behaviour = (e) =>
      e.body.attempt === 1 ? { kind: 'fail', error: 'mailbox full' } : { kind: 'complete' };
    const created = await send('POST', url('/jobs'), {
      job_type: 'lesson_reminder',
      delay_seconds: 0,
    });
    const id = created.body.job_id;
    const dead = await settled(id, 'dead');
    assert.equal(dead.attempt, 1);
    assert.equal((await send('POST', url(`/jobs/${uuid()}/retry`), {})).status, 404);

    const retried = await send('POST', url(`/jobs/${id}/retry`), { max_attempts: 2 });
    assert.equal(retried.status, 200);
    assert.equal(retried.body.max_attempts, 3);
    const done = await settled(id, 'succeeded');
    assert.equal(done.attempt, 2);
    assert.deepEqual(
      backend.executesOf(id).map((e) => e.properties.messageId),
      [`${id}:1`, `${id}:2`],
    );
    assert.equal((await send('POST', url(`/jobs/${id}/retry`), {})).status, 409);
    backend.behaviour = () => ({ kind: 'complete' });
  });

  it('GET /jobs pages by scheduled_for then job_id with an opaque cursor, and filters', async () => {
    const subject = `lesson:${uuid()}`;
    const base = Date.now() + 86_400_000;
    const ids: string[] = [];
    for (let i = 0; i < 5; i += 1) {
      const created = await send('POST', url('/jobs'), {
        job_type: 'lesson_reminder',
        scheduled_for: new Date(base + (i % 3) * 1000).toISOString(),
        subject,
      });
      ids.push(created.body.job_id);
    }
    const seen: any[] = [];
    let cursor: string | null = null;
    do {
      const query: string = `/jobs?subject=${encodeURIComponent(subject)}&limit=2${cursor ? `&cursor=${cursor}` : ''}`;
      const page = await getJson(url(query));
      assert.equal(page.status, 200);
      assert.ok(page.body.jobs.length <= 2);
      seen.push(...page.body.jobs);
      cursor = page.body.next_cursor;
    } while (cursor);
    assert.deepEqual(seen.map((j) => j.job_id).sort(), [...ids].sort());
    const order = seen.map((j) => `${j.scheduled_for}|${j.job_id}`);
    assert.deepEqual(order, [...order].sort(), 'ordered by scheduled_for then job_id');

    const filtered = await getJson(
      url(`/jobs?subject=${encodeURIComponent(subject)}&state=cancelled`),
    );
    assert.deepEqual(filtered.body, { jobs: [], next_cursor: null });
    assert.equal((await getJson(url('/jobs?cursor=garbage'))).status, 400);
    assert.equal((await getJson(url('/jobs?limit=501'))).body.error.field, 'limit');
    assert.equal((await getJson(url('/jobs?state=sleeping'))).body.error.field, 'state');
  });
});

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

const REASON = 'x-scheduler-reason';

describe('bad input over RabbitMQ is refused, dead-lettered with its reason, and touches nothing else', () => {
  const env = isolatedEnv({ MESSAGE_MAX_BYTES: '2048', METADATA_MAX_BYTES: '256' });
  let sut: ServiceUnderTest;
  let backend: FakeBackend;

  before(async () => {
    sut = await startTestService(env);
    backend = await FakeBackend.start(env, { deadLetters: true });
  });

  after(async () => {
    await backend?.close();
    await sut?.stop();
    await cleanUp(env);
  });

  const deadLetter = (marker: string) =>
    eventually(
      () => backend.deadLetters.find((d) => d.content.toString().includes(marker)),
      5000,
      `dead letter containing ${marker}`,
    );

  const commands: [string, Record<string, unknown> | string, RegExp][] = [
    [
      'unknown job type',
      { job_type: 'launch_rockets', delay_seconds: 0 },
      /^job_type: unknown job type/,
    ],
    [
      'no timing',
      { job_type: 'lesson_reminder' },
      /one of scheduled_for, delay_seconds or anchor_at/,
    ],
    [
      'two timings',
      { job_type: 'lesson_reminder', delay_seconds: 1, scheduled_for: '2030-01-01T00:00:00Z' },
      /only one of/,
    ],
    [
      'naive datetime',
      { job_type: 'lesson_reminder', scheduled_for: '2030-01-01T09:00:00' },
      /^scheduled_for: expected an ISO-8601 datetime with a UTC offset/,
    ],
    ['negative delay', { job_type: 'lesson_reminder', delay_seconds: -5 }, /^delay_seconds:/],
    ['absurd delay', { job_type: 'lesson_reminder', delay_seconds: 1e12 }, /^delay_seconds:/],
    [
      'metadata over the limit',
      { job_type: 'lesson_reminder', delay_seconds: 1, metadata: { blob: 'x'.repeat(400) } },
      /^metadata: larger than 256 bytes/,
    ],
    [
      'metadata not an object',
      { job_type: 'lesson_reminder', delay_seconds: 1, metadata: [1] },
      /^metadata:/,
    ],
    [
      'bad job_id',
      { job_type: 'lesson_reminder', delay_seconds: 1, job_id: 'abc' },
      /^job_id: expected a UUID/,
    ],
    [
      'expires_at in the past',
      { job_type: 'lesson_reminder', delay_seconds: 1, expires_at: '2020-01-01T00:00:00Z' },
      /^expires_at: is in the past/,
    ],
    ['not JSON', '{"job_type": ', /body is not valid JSON/],
    [
      'too large',
      JSON.stringify({ job_type: 'lesson_reminder', pad: 'y'.repeat(3000) }),
      /over the limit of 2048/,
    ],
  ];

  for (const [what, body, expected] of commands) {
    it(`jobs.schedule with ${what} is answered ok:false naming the field, then dead-lettered`, async () => {
      const marker = uuid();
      const content =
        typeof body === 'string'
          ? body.replace('{', `{"marker":"${marker}",`)
          : { ...body, marker };
      const answer = await backend.command('jobs.schedule', content);
      assert.equal(answer.ok, false);
      assert.match(answer.error, expected);
      const letter = await deadLetter(marker);
      assert.match(String(letter.headers[REASON]), expected);
      assert.equal(letter.routingKey, 'jobs.schedule');
    });
  }

  const replies: [string, string, unknown, RegExp][] = [
    ['not JSON', 'jobs.completed', 'not json at all', /body is not valid JSON/],
    [
      'an event_type that does not match its routing key',
      'jobs.completed',
      {
        event_type: 'jobs.failed',
        job_id: uuid(),
        failed_at: new Date().toISOString(),
        error_message: 'x',
      },
      /does not match routing key jobs.completed/,
    ],
    [
      'a missing field',
      'jobs.failed',
      { event_type: 'jobs.failed', job_id: uuid(), failed_at: new Date().toISOString() },
      /^error_message:/,
    ],
    [
      'a wrong type',
      'jobs.completed',
      {
        event_type: 'jobs.completed',
        job_id: uuid(),
        completed_at: new Date().toISOString(),
        attempt: 'one',
      },
      /^attempt:/,
    ],
    [
      'a naive datetime',
      'jobs.completed',
      { event_type: 'jobs.completed', job_id: uuid(), completed_at: '2026-01-01T10:00:00' },
      /^completed_at: expected an ISO-8601 datetime with a UTC offset/,
    ],
    [
      'a job_id that is not a UUID',
      'jobs.completed',
      { event_type: 'jobs.completed', job_id: 'job-1', completed_at: new Date().toISOString() },
      /^job_id: expected a UUID/,
    ],
  ];

  for (const [what, routingKey, body, expected] of replies) {
    it(`a reply with ${what} is dead-lettered with the reason`, async () => {
      const marker = uuid();
      const content =
        typeof body === 'string'
          ? `${body} ${marker}`
          : JSON.stringify({ ...(body as object), marker });
      await backend.publish(routingKey, content);
      const letter = await deadLetter(marker);
      assert.match(String(letter.headers[REASON]), expected);
      assert.equal(letter.routingKey, routingKey);
      assert.ok(sut.logs.find('dead-lettering a message').length > 0);
    });
  }

  it('after all of it the service is ready and a valid job still runs to success', async () => {
    const ready = await getJson(`${sut.baseUrl}/health/ready`);
    assert.equal(ready.status, 200);
    const answer = await backend.command('jobs.schedule', {
      job_type: 'file_cleanup',
      delay_seconds: 0,
    });
    assert.equal(answer.ok, true);
    await eventually(
      async () =>
        (await getJson(`${sut.baseUrl}/jobs/${answer.job_id}`)).body.state === 'succeeded',
      10_000,
      'the valid job to succeed',
    );
  });

  it('cancel of an unknown job is answered ok:false and acknowledged, not dead-lettered', async () => {
    const id = uuid();
    const answer = await backend.command('jobs.cancel', { job_id: id });
    assert.deepEqual(answer, { ok: false, error: `job ${id} not found` });
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(
      backend.deadLetters.some((d) => d.content.toString().includes(id)),
      false,
    );
  });
});

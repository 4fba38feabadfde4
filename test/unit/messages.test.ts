import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  createScheduleSchema,
  check,
  InvalidMessageError,
  parseInstant,
  parseJson,
  parseReply,
} from '../../src/broker/messages.js';

const schedule = createScheduleSchema({ maxDelaySeconds: 86_400 * 365, metadataMaxBytes: 100 });
const JOB = '6f1c1a52-2f7a-4c2b-9a37-0d6f4f3c1a11';

describe('message schemas', () => {
  it('keeps milliseconds and cuts microseconds, never rounding up', () => {
    assert.equal(
      new Date(parseInstant('2026-03-01T10:00:00.123999+00:00')).toISOString(),
      '2026-03-01T10:00:00.123Z',
    );
    assert.equal(
      new Date(parseInstant('2026-03-01T12:00:00.999999+02:00')).toISOString(),
      '2026-03-01T10:00:00.999Z',
    );
  });

  it('refuses a date or time that does not exist instead of moving it', () => {
    for (const text of [
      '2026-02-30T00:00:00Z',
      '2026-04-31T10:00:00Z',
      '2026-01-01T24:00:00Z',
      '2026-13-01T00:00:00Z',
      '2026-01-01T10:60:00+01:00',
    ]) {
      assert.throws(
        () => check(schedule, { job_type: 'lesson_reminder', scheduled_for: text }),
        /scheduled_for: not a valid date and time/,
        text,
      );
    }
    const leap = check(schedule, {
      job_type: 'lesson_reminder',
      scheduled_for: '2028-02-29T23:59:59Z',
    });
    assert.deepEqual(leap.timing, { kind: 'at', at: Date.parse('2028-02-29T23:59:59Z') });
  });

  it('refuses a body with a NUL character anywhere, which PostgreSQL cannot store', () => {
    assert.throws(
      () => parseJson(Buffer.from('{"error_message":"bad\\u0000byte"}'), 1000),
      /NUL character/,
    );
    assert.doesNotThrow(() => parseJson(Buffer.from('{"text":"a\\\\u0000b"}'), 1000));
  });

  it('takes a completed reply without attempt or result, and ignores unknown fields', () => {
    const reply = parseReply('jobs.completed', {
      event_type: 'jobs.completed',
      job_id: JOB,
      completed_at: '2026-03-01T10:00:00Z',
      extra: 'ignored',
    });
    assert.deepEqual(reply, {
      event_type: 'jobs.completed',
      job_id: JOB,
      completed_at: Date.parse('2026-03-01T10:00:00Z'),
    });
  });

  it('defaults should_retry to true on a failed reply', () => {
    const reply = parseReply('jobs.failed', {
      event_type: 'jobs.failed',
      job_id: JOB,
      failed_at: '2026-03-01T10:00:00-05:00',
      error_message: 'x',
    });
    assert.equal(reply.event_type === 'jobs.failed' && reply.should_retry, true);
  });

  it('refuses JSON that is not JSON, and a body over the limit without parsing it', () => {
    assert.throws(() => parseJson(Buffer.from('{'), 100), /not valid JSON/);
    assert.throws(
      () => parseJson(Buffer.from('x'.repeat(101)), 100),
      /101 bytes, over the limit of 100/,
    );
  });

  it('reads the three timings and refuses none or two', () => {
    const at = check(schedule, {
      job_type: 'lesson_reminder',
      scheduled_for: '2030-01-01T00:00:00Z',
    });
    assert.deepEqual(at.timing, { kind: 'at', at: Date.parse('2030-01-01T00:00:00Z') });
    const delay = check(schedule, { job_type: 'lesson_reminder', delay_seconds: 1.5 });
    assert.deepEqual(delay.timing, { kind: 'delay', seconds: 1.5 });
    const anchor = check(schedule, {
      job_type: 'lesson_reminder',
      anchor_at: '2030-01-02T00:00:00+01:00',
      offset_seconds: -86_400,
    });
    assert.deepEqual(anchor.timing, {
      kind: 'anchor',
      anchorAt: Date.parse('2030-01-01T23:00:00Z'),
      offsetSeconds: -86_400,
    });
    assert.throws(() => check(schedule, { job_type: 'lesson_reminder' }), InvalidMessageError);
  });

  it('names the field at fault', () => {
    try {
      check(schedule, {
        job_type: 'lesson_reminder',
        delay_seconds: 1,
        metadata: { a: 'x'.repeat(200) },
      });
      assert.fail('accepted');
    } catch (err) {
      assert.ok(err instanceof InvalidMessageError);
      assert.equal(err.field, 'metadata');
      assert.match(err.reason, /^metadata: larger than 100 bytes/);
    }
  });
});

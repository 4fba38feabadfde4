import { after, before, beforeEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { FakeBackend } from '../support/backend.js';
import {
  cleanUp,
  eventually,
  getJson,
  isolatedEnv,
  startTestService,
  stopAllServices,
  type ServiceUnderTest,
} from '../support/harness.js';

interface SseEvent {
  id?: string;
  event?: string;
  data: string;
}

/** A plain HTTP client reading an event stream, as any non-browser client would. */
class SseClient {
  readonly events: SseEvent[] = [];
  status = 0;
  headers: http.IncomingHttpHeaders = {};
  ended = false;
  aborted = false;
  private buffer = '';
  private request: http.ClientRequest | undefined;

  static open(url: string, headers: Record<string, string> = {}): Promise<SseClient> {
    const client = new SseClient();
    return new Promise((resolve, reject) => {
      client.request = http.get(url, { headers }, (res) => {
        client.status = res.statusCode ?? 0;
        client.headers = res.headers;
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => client.take(chunk));
        res.on('end', () => (client.ended = true));
        res.on('aborted', () => (client.aborted = true));
        res.on('error', () => (client.aborted = true));
        resolve(client);
      });
      client.request.on('error', reject);
    });
  }

  transitions(): { id: string; [k: string]: any }[] {
    return this.events.filter((e) => e.event === 'transition').map((e) => JSON.parse(e.data));
  }

  close(): void {
    this.request?.destroy();
  }

  private take(chunk: string): void {
    this.buffer += chunk;
    let end: number;
    while ((end = this.buffer.indexOf('\n\n')) !== -1) {
      const block = this.buffer.slice(0, end);
      this.buffer = this.buffer.slice(end + 2);
      const event: SseEvent = { data: '' };
      const data: string[] = [];
      for (const line of block.split('\n')) {
        if (line.startsWith(':')) continue;
        const colon = line.indexOf(':');
        const field = colon === -1 ? line : line.slice(0, colon);
        const value = colon === -1 ? '' : line.slice(colon + 1).replace(/^ /, '');
        if (field === 'id') event.id = value;
        else if (field === 'event') event.event = value;
        else if (field === 'data') data.push(value);
      }
      if (data.length === 0) continue;
      event.data = data.join('\n');
      this.events.push(event);
    }
  }
}

/**
 * The SSE id of a transition message: the stream's resume point, `top` or
 * `top:from-to,id,…` (the highest transition id sent, and the ids below it that
 * may still arrive). Parsed here on its own, not with the service's parser.
 */
function resumePoint(id: string | undefined): { top: bigint; missing: [bigint, bigint][] } {
  const m = /^(\d+)(?::([\d,-]+))?$/.exec(id ?? '');
  assert.ok(m, `a resume point: ${id}`);
  const missing = (m[2] ?? '')
    .split(',')
    .filter((p) => p !== '')
    .map((p) => p.split('-').map(BigInt))
    .map(([from, to]) => [from, to ?? from] as [bigint, bigint]);
  return { top: BigInt(m[1] ?? ''), missing };
}

const isMissing = (point: ReturnType<typeof resumePoint>, id: bigint) =>
  point.missing.some(([from, to]) => from <= id && id <= to);

describe('the state inspector: live actors, one job, and the stream of transitions', () => {
  const env = isolatedEnv({
    REMINDER_JOB_TIMEOUT_SECONDS: '5',
    SSE_MAX_BUFFERED_EVENTS: '20',
    SSE_HEARTBEAT_SECONDS: '1',
  });
  const schema = env['SCHEDULER_POSTGRES_SCHEMA'];
  let sut: ServiceUnderTest;
  let backend: FakeBackend;
  const url = (path: string) => `${sut.baseUrl}${path}`;

  before(async () => {
    sut = await startTestService(env);
    backend = await FakeBackend.start(env);
  });
  beforeEach(() => {
    backend.behaviour = () => ({ kind: 'complete' });
  });
  after(async () => {
    await backend?.close();
    await stopAllServices();
    await cleanUp(env);
  });

  const schedule = async (body: Record<string, unknown>): Promise<string> => {
    const reply = await backend.command('jobs.schedule', body);
    assert.equal(reply.ok, true, JSON.stringify(reply));
    return reply.job_id;
  };
  const settled = (id: string, state: string) =>
    eventually(
      async () => {
        const view = (await getJson(url(`/jobs/${id}`))).body;
        return view.state === state ? view : undefined;
      },
      10_000,
      `job ${id} ${state}`,
    );

  it('GET /debug/jobs: live actors by state and job type, oldest, next wake-ups', async () => {
    const soon = Date.now() + 60_000;
    const lessons = [];
    for (const offset of [30_000, 10_000, 20_000]) {
      lessons.push(
        await schedule({
          job_type: 'lesson_reminder',
          scheduled_for: new Date(soon + offset).toISOString(),
        }),
      );
    }
    const file = await schedule({
      job_type: 'file_cleanup',
      scheduled_for: new Date(soon + 5_000).toISOString(),
    });

    const { status, body } = await getJson(url('/debug/jobs'));
    assert.equal(status, 200);
    assert.ok(body.live >= 4);
    const pending = body.states.find((s: any) => s.state === 'pending');
    assert.equal(
      body.states.map((s: any) => s.state).join(),
      'pending,dispatched,awaiting-ack,failed,retrying,succeeded,dead,cancelled',
    );
    const lessonGroup = pending.job_types.find((t: any) => t.job_type === 'lesson_reminder');
    assert.equal(lessonGroup.count, 3);
    assert.equal(lessonGroup.oldest_waiting.job_id, lessons[1]);
    assert.equal(Date.parse(lessonGroup.oldest_waiting.due_at), soon + 10_000);
    assert.equal(pending.job_types.find((t: any) => t.job_type === 'file_cleanup').count, 1);

    const mine = new Set([...lessons, file]);
    const wakeUps = body.wake_ups.filter((w: any) => mine.has(w.job_id));
    assert.deepEqual(
      wakeUps.map((w: any) => w.job_id),
      [file, lessons[1], lessons[2], lessons[0]],
    );
    assert.equal(wakeUps[0].event, 'due');
    assert.ok(body.service_wake_ups.some((w: any) => w.name === 'history clean-up' && w.at));

    const filtered = await getJson(url('/debug/jobs?state=pending&job_type=file_cleanup'));
    assert.deepEqual(
      filtered.body.jobs.map((j: any) => j.job_id),
      [file],
    );
    assert.equal(filtered.body.jobs[0].next_at, new Date(soon + 5_000).toISOString());

    const bad = await getJson(url('/debug/jobs?state=sleeping'));
    assert.equal(bad.status, 400);
    assert.equal(bad.body.error.field, 'state');
  });

  it('GET /debug/jobs/:id: live snapshot, then the stored one and the full history', async () => {
    backend.behaviour = () => ({ kind: 'silent' });
    const id = await schedule({ job_type: 'lesson_reminder', delay_seconds: 0.2 });
    await backend.waitForExecutes(id, 1);
    const live = await eventually(
      async () => {
        const { body } = await getJson(url(`/debug/jobs/${id}`));
        const waiting =
          body.snapshot?.value === 'awaiting-ack' && body.job.state === 'awaiting-ack';
        return waiting ? body : undefined;
      },
      5000,
      'the job awaiting its reply',
    );
    assert.equal(live.live, true);
    assert.equal(live.snapshot_source, 'live');
    assert.equal(live.snapshot.context.jobId, id);
    assert.deepEqual(live.snapshot.children, ['deadlineTimer']);
    assert.equal(live.job.state, 'awaiting-ack');

    const [execute] = backend.executesOf(id);
    await backend.publish('jobs.completed', {
      event_type: 'jobs.completed',
      job_id: id,
      completed_at: new Date().toISOString(),
      result: { sent: 1 },
      attempt: execute?.body.attempt,
    });
    await settled(id, 'succeeded');

    const { status, body } = await getJson(url(`/debug/jobs/${id}`));
    assert.equal(status, 200);
    assert.equal(body.live, false);
    assert.equal(body.snapshot_source, 'stored');
    assert.equal(body.snapshot.value, 'succeeded');
    assert.equal(body.job.state, 'succeeded');
    assert.deepEqual(body.job.result, { sent: 1 });
    assert.deepEqual(
      body.transitions.map((t: any) => `${t.from ?? '-'}>${t.to}:${t.event}#${t.attempt}`),
      [
        '->pending:jobs.schedule#0',
        'pending>dispatched:due#1',
        'dispatched>awaiting-ack:publish.confirmed#1',
        'awaiting-ack>succeeded:jobs.completed#1',
      ],
    );
    const confirmed = body.transitions[2];
    assert.equal(confirmed.detail.message_id, `${id}:1`);
    assert.ok(Date.parse(confirmed.at) > 0);
    assert.ok(
      body.transitions.every(
        (t: any, i: number, all: any[]) => i === 0 || BigInt(t.id) > BigInt(all[i - 1].id),
      ),
    );

    assert.equal((await getJson(url('/debug/jobs/not-a-uuid'))).status, 400);
    const missing = await getJson(url('/debug/jobs/00000000-0000-4000-8000-000000000000'));
    assert.equal(missing.status, 404);
  });

  it('GET /debug/events: creations and transitions, by job, type, state', async (t) => {
    const byType = await SseClient.open(url('/debug/events?job_type=homework_reminder'));
    const finished = await SseClient.open(url('/debug/events?state=succeeded'));
    t.after(() => [byType, finished].forEach((c) => c.close()));
    assert.equal(byType.status, 200);
    assert.match(String(byType.headers['content-type']), /^text\/event-stream/);

    const homework = await schedule({ job_type: 'homework_reminder', delay_seconds: 0 });
    const lesson = await schedule({ job_type: 'lesson_reminder', delay_seconds: 0 });
    const byJob = await SseClient.open(url(`/debug/events?job_id=${lesson}`));
    t.after(() => byJob.close());
    await settled(homework, 'succeeded');
    await settled(lesson, 'succeeded');

    await eventually(() => byType.transitions().some((t) => t.to === 'succeeded'), 5000);
    assert.ok(byType.transitions().every((t) => t.job_type === 'homework_reminder'));
    const [creation] = byType.transitions();
    assert.equal(creation?.job_id, homework);
    assert.deepEqual(
      [creation?.from, creation?.to, creation?.event, creation?.attempt],
      [null, 'pending', 'jobs.schedule', 0],
    );
    assert.equal(byType.transitions().at(-1)?.to, 'succeeded');
    const { rows } = await sut.pool.query(
      `select t.id::text, t.to_state from "${schema}".job_transitions t
       where t.job_id = $1
       order by t.id`,
      [homework],
    );
    assert.equal(rows[0]?.to_state, 'pending');
    assert.deepEqual(
      byType.transitions().map((t) => t.id),
      rows.map((r) => r.id),
    );
    // Each message's SSE id is the resume point: up to the highest id sent, this one included.
    let highest = 0n;
    for (const e of byType.events.filter((e) => e.event === 'transition')) {
      const id = BigInt(JSON.parse(e.data).id);
      highest = id > highest ? id : highest;
      const point = resumePoint(e.id);
      assert.equal(point.top, highest);
      assert.ok(!isMissing(point, id), `${e.id} counts ${id} as sent`);
    }

    await eventually(() => finished.transitions().length >= 2, 5000);
    assert.ok(finished.transitions().every((t) => t.to === 'succeeded'));
    await eventually(() => byJob.transitions().some((t) => t.to === 'succeeded'), 5000);
    assert.ok(byJob.transitions().every((t) => t.job_id === lesson));

    const bad = await getJson(url('/debug/events?job_type=cooking'));
    assert.equal(bad.status, 400);
    assert.equal(bad.body.error.field, 'job_type');
  });

  it('an idle stream gets heartbeat comments', async () => {
    const socket = net.connect(Number(new URL(sut.baseUrl).port), '127.0.0.1');
    let received = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => (received += chunk));
    socket.write(
      `GET /debug/events?job_id=00000000-0000-4000-8000-000000000000 HTTP/1.1\r\n` +
        `Host: 127.0.0.1\r\n\r\n`,
    );
    await eventually(() => received.includes(': heartbeat'), 5000, 'a heartbeat');
    socket.destroy();
  });

  it('Last-Event-ID: missed ones from history, then live; no gap, no duplicate', async () => {
    const first = await SseClient.open(url('/debug/events?job_type=payment_reminder'));
    const before = await schedule({ job_type: 'payment_reminder', delay_seconds: 0 });
    await settled(before, 'succeeded');
    await eventually(() => first.transitions().length >= 3, 5000);
    const lastSeen = first.events.filter((e) => e.event === 'transition').at(-1)?.id ?? '';
    first.close();

    // While it is away: jobs created, some running at once, most due around the reconnect.
    const missed: string[] = [];
    const start = Date.now();
    for (let i = 0; i < 40; i += 1) {
      const at = new Date(start + (i < 10 ? 0 : 300 + i * 25)).toISOString();
      missed.push(await schedule({ job_type: 'payment_reminder', scheduled_for: at }));
    }
    await settled(missed[0] ?? '', 'succeeded');

    const again = await SseClient.open(url('/debug/events?job_type=payment_reminder'), {
      'last-event-id': lastSeen,
    });
    const atReconnect = await sut.pool.query(
      `select coalesce(max(id), 0)::text as id from "${schema}".job_transitions`,
    );
    const seam = BigInt(atReconnect.rows[0].id);
    for (const id of missed) await settled(id, 'succeeded');
    const from = resumePoint(lastSeen);
    const { rows: all } = await sut.pool.query(
      `select t.id::text, t.job_id, t.from_state, t.to_state
       from "${schema}".job_transitions t
       join "${schema}".jobs j on j.id = t.job_id
       where j.job_type = 'payment_reminder'
       order by t.id`,
    );
    const rows = all.filter((r) => BigInt(r.id) > from.top || isMissing(from, BigInt(r.id)));
    const expected = rows.map((r) => r.id);
    await eventually(() => again.transitions().length >= expected.length, 5000, 'the replay');
    const got = again.transitions().map((t) => t.id);
    assert.equal(new Set(got).size, got.length, 'no transition twice');
    assert.deepEqual(
      [...got].sort((a, b) => Number(BigInt(a) - BigInt(b))),
      expected,
    );
    for (const id of missed) {
      const ofJob = rows.filter((r) => r.job_id === id);
      assert.equal(ofJob[0]?.from_state, null, `the creation of ${id} is replayed`);
      assert.equal(ofJob.at(-1)?.to_state, 'succeeded', `the end of ${id} arrives`);
    }
    // Both sides of the seam were exercised: history read back, and live events after it.
    assert.ok(
      got.some((id) => BigInt(id) <= seam),
      'some came from the history',
    );
    assert.ok(
      got.some((id) => BigInt(id) > seam),
      'some came live',
    );
    again.close();

    for (const bad of ['abc', '12:13', '12:5-3', '99999999999999999999']) {
      const badId = await getJson(url(`/debug/events?last_event_id=${bad}`));
      assert.equal(badId.status, 400, bad);
      assert.equal(badId.body.error.field, 'last_event_id');
    }
  });

  it('an id committed after higher ones: streamed live, not missed on reconnect', async (t) => {
    const type = 'telegram_link_reminder';
    const stays = await SseClient.open(url(`/debug/events?job_type=${type}`));
    const leaves = await SseClient.open(url(`/debug/events?job_type=${type}`));
    t.after(() => [stays, leaves].forEach((c) => c.close()));
    const waiting = await schedule({ job_type: type, delay_seconds: 3600 });

    // A write that takes its id now and commits later, as a creation does
    // beside the group commit: the next job's ids are all higher.
    const tx = await sut.pool.connect();
    t.after(() => tx.release(true));
    await tx.query('begin');
    const late = (
      await tx.query(
        `insert into "${schema}".job_transitions (job_id, from_state, to_state, event, attempt, at)
         values ($1, 'pending', 'pending', 'test.late', 0, now())
         returning id::text`,
        [waiting],
      )
    ).rows[0].id as string;
    const running = await schedule({ job_type: type, delay_seconds: 0 });
    await settled(running, 'succeeded');
    await eventually(() => leaves.transitions().some((e) => e.to === 'succeeded'), 5000);
    const ahead = leaves.transitions().filter((e) => e.job_id === running);
    assert.ok(ahead.every((e) => BigInt(e.id) > BigInt(late)));
    const lastSeen = leaves.events.filter((e) => e.event === 'transition').at(-1)?.id;
    const point = resumePoint(lastSeen);
    assert.equal(point.top, BigInt(ahead.at(-1)?.id ?? ''));
    assert.ok(isMissing(point, BigInt(late)), `${lastSeen} lists ${late} as missing`);
    leaves.close();

    await tx.query('commit');
    sut.service.services.bus.emit('transition', {
      id: late,
      jobId: waiting,
      jobType: type,
      from: 'pending',
      to: 'pending',
      event: 'test.late',
      attempt: 0,
      at: Date.now(),
      detail: null,
    });
    await eventually(
      () => stays.transitions().some((e) => e.id === late),
      5000,
      'the late one live',
    );
    assert.equal(stays.transitions().at(-1)?.id, late, 'after the higher ids, not dropped');
    assert.ok(!isMissing(resumePoint(stays.events.at(-1)?.id), BigInt(late)));

    const back = await SseClient.open(url(`/debug/events?job_type=${type}`), {
      'last-event-id': lastSeen ?? '',
    });
    t.after(() => back.close());
    const next = await schedule({ job_type: type, delay_seconds: 3600 });
    await eventually(() => back.transitions().some((e) => e.job_id === next), 5000, 'the next');
    assert.deepEqual(
      back.transitions().map((e) => `${e.job_id === next ? 'next' : e.id}:${e.event}`),
      [`${late}:test.late`, 'next:jobs.schedule'],
      'the late one from the history, nothing twice, then live',
    );
  });

  it('a client that stops reading is dropped at the buffer limit; jobs run on', async () => {
    const socket = net.connect(Number(new URL(sut.baseUrl).port), '127.0.0.1');
    let closed = false;
    socket.on('close', () => (closed = true));
    socket.on('error', () => {});
    await new Promise((resolve) => socket.once('connect', resolve));
    socket.write(`GET /debug/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`);
    await new Promise((resolve) => socket.once('data', resolve));
    // From here the client reads nothing: the kernel's buffers fill, then the stream's queue.
    socket.pause();

    const running: string[] = [];
    for (let i = 0; i < 10; i += 1) {
      running.push(await schedule({ job_type: 'lesson_reminder', delay_seconds: 0 }));
    }
    // Committed-transition events, large enough to fill the socket's buffers quickly.
    const bus = sut.service.services.bus;
    const padding = 'x'.repeat(2000);
    for (let i = 0; i < 20_000; i += 1) {
      bus.emit('transition', {
        id: String(10_000_000 + i),
        jobId: '00000000-0000-4000-8000-000000000001',
        jobType: 'file_cleanup',
        from: 'pending',
        to: 'dispatched',
        event: 'due',
        attempt: 1,
        at: Date.now(),
        detail: { padding },
      });
    }

    const warning = await eventually(
      () => sut.logs.find('inspector stream fell behind; disconnected')[0],
      5000,
      'the slow stream to be dropped',
    );
    assert.equal(warning['buffered'], 21);
    assert.equal(warning['max'], 20);
    const streams = async () => {
      const text = await (await fetch(url('/metrics'))).text();
      return Number(/^scheduler_inspector_streams (\d+)$/m.exec(text)?.[1]);
    };
    await eventually(async () => (await streams()) === 0, 5000, 'the stream to be dropped');
    for (const id of running) await settled(id, 'succeeded');
    // Once it reads again, the client finds the end of what was sent before the drop.
    socket.resume();
    await eventually(() => closed, 5000, 'the client to see the connection closed');
    socket.destroy();
  });

  it('shutdown ends open streams cleanly and does not wait for them', async () => {
    const open = await SseClient.open(url('/debug/events'));
    await sut.stop();
    await eventually(() => open.ended || open.aborted, 2000, 'the stream to end');
    assert.equal(open.ended, true);
    assert.ok(sut.logs.find('shutdown step failed').length === 0);
  });
});

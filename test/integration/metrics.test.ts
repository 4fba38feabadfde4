import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { FakeBackend } from '../support/backend.js';
import { FreezableProxy } from '../support/child.js';
import {
  cleanUp,
  eventually,
  getJson,
  isolatedEnv,
  startTestService,
  stopAllServices,
  type ServiceUnderTest,
} from '../support/harness.js';

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parses the Prometheus text format back into samples; throws on a line it cannot read. */
function parseMetrics(text: string): { samples: Sample[]; types: Map<string, string> } {
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const type = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (type) {
      types.set(type[1] ?? '', type[2] ?? '');
      continue;
    }
    if (line.startsWith('#')) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!match) throw new Error(`not a sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const pair of (match[2] ?? '').matchAll(/([a-zA-Z_]\w*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[pair[1] ?? ''] = (pair[2] ?? '').replace(/\\(.)/g, '$1');
    }
    samples.push({ name: match[1] ?? '', labels, value: Number(match[3]) });
  }
  return { samples, types };
}

function value(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  const found = samples.filter(
    (s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v),
  );
  if (found.length === 0) throw new Error(`no sample ${name} ${JSON.stringify(labels)}`);
  return found.reduce((sum, s) => sum + s.value, 0);
}

const TOKEN = 'metrics-test-token-0123456789';
/** The broker itself; the service under test reaches it through a proxy that can cut it off. */
const DIRECT = 'amqp://guest:guest@127.0.0.1:5672/';

describe('GET /metrics in the Prometheus text format', () => {
  let proxy: FreezableProxy;
  let env: Record<string, string>;
  let sut: ServiceUnderTest;
  let backend: FakeBackend;

  before(async () => {
    proxy = await FreezableProxy.start({ host: '127.0.0.1', port: 5672 });
    env = isolatedEnv({ SCHEDULER_API_TOKEN: TOKEN });
    env['RABBITMQ_URL'] = `amqp://guest:guest@127.0.0.1:${proxy.port}/`;
    sut = await startTestService(env);
    backend = await FakeBackend.start({ ...env, RABBITMQ_URL: DIRECT });
  });
  after(async () => {
    await backend?.close();
    await stopAllServices();
    await proxy?.close();
    await cleanUp({ ...env, RABBITMQ_URL: DIRECT });
  });

  const scrape = async () => {
    const response = await fetch(`${sut.baseUrl}/metrics`, {
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    assert.equal(response.status, 200);
    assert.match(response.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    return parseMetrics(await response.text());
  };
  const settled = (id: string, state: string) =>
    eventually(
      async () => {
        const { body } = await getJson(`${sut.baseUrl}/jobs/${id}`, {
          authorization: `Bearer ${TOKEN}`,
        });
        return body.state === state ? body : undefined;
      },
      10_000,
      `job ${id} ${state}`,
    );

  it('needs the bearer token; the query token is for /debug only', async () => {
    assert.equal((await fetch(`${sut.baseUrl}/metrics`)).status, 401);
    assert.equal((await fetch(`${sut.baseUrl}/metrics?token=${TOKEN}`)).status, 401);
    const wrong = await fetch(`${sut.baseUrl}/metrics`, {
      headers: { authorization: 'Bearer not-the-token-at-all' },
    });
    assert.equal(wrong.status, 401);
  });

  it('reports jobs, transitions, attempts, dispatch lag, reply latency, writes', async () => {
    backend.behaviour = (e) =>
      e.body.attempt === 1 ? { kind: 'fail', error: 'try again' } : { kind: 'complete' };
    const done = await backend.command('jobs.schedule', {
      job_type: 'lesson_reminder',
      delay_seconds: 0,
      min_retry_delay_seconds: 0.1,
    });
    const waiting = await backend.command('jobs.schedule', {
      job_type: 'homework_reminder',
      delay_seconds: 600,
    });
    assert.equal(waiting.ok, true);
    await settled(done.job_id, 'succeeded');

    const { samples, types } = await scrape();
    const lesson = { job_type: 'lesson_reminder' };
    const homework = { job_type: 'homework_reminder' };
    const of = (name: string, labels: Record<string, string> = {}) => value(samples, name, labels);
    assert.equal(of('scheduler_jobs_live', { state: 'pending', ...homework }), 1);
    assert.equal(of('scheduler_jobs_live', { state: 'succeeded' }), 0);
    assert.equal(of('scheduler_jobs_stored', { state: 'succeeded', ...lesson }), 1);
    assert.equal(of('scheduler_jobs_stored', { state: 'pending', ...homework }), 1);
    // A reply can beat the publish confirm, so the state left is not asserted.
    const moves = (labels: Record<string, string>) =>
      of('scheduler_transitions_total', { ...labels, ...lesson });
    assert.equal(moves({ to: 'retrying' }), 1);
    assert.equal(moves({ to: 'succeeded' }), 1);
    assert.equal(moves({ from: 'pending', to: 'dispatched' }), 1);
    assert.equal(moves({ from: 'retrying', to: 'dispatched' }), 1);
    assert.equal(of('scheduler_attempts_published_total', lesson), 2);
    assert.equal(of('scheduler_job_attempts_count', { state: 'succeeded', ...lesson }), 1);
    assert.equal(of('scheduler_job_attempts_sum', { state: 'succeeded', ...lesson }), 2);
    assert.equal(value(samples, 'scheduler_dispatch_lag_seconds_count', lesson), 2);
    assert.equal(types.get('scheduler_dispatch_lag_seconds'), 'histogram');
    assert.equal(
      value(samples, 'scheduler_dispatch_lag_seconds_bucket', { ...lesson, le: '+Inf' }),
      2,
    );
    const latency = 'scheduler_reply_latency_seconds_count';
    assert.equal(of(latency, { ...lesson, reply: 'jobs.completed' }), 1);
    assert.equal(of(latency, { ...lesson, reply: 'jobs.failed' }), 1);
    assert.ok(value(samples, 'scheduler_commit_batch_rows_count') >= 4);
    assert.ok(value(samples, 'scheduler_commit_batch_rows_sum') >= 4);
    assert.ok(value(samples, 'scheduler_commit_duration_seconds_sum') > 0);
    assert.equal(types.get('nodejs_eventloop_lag_seconds'), 'gauge');
    assert.ok(value(samples, 'nodejs_eventloop_lag_p99_seconds') >= 0);
    assert.equal(value(samples, 'scheduler_broker_connected'), 1);
    assert.equal(value(samples, 'scheduler_inspector_streams'), 0);
  });

  it('counts a broker reconnect after the connection was cut', async () => {
    const current = async (name: string) => value((await scrape()).samples, name);
    const before = await current('scheduler_broker_reconnects_total');
    proxy.cut();
    await eventually(
      async () => (await current('scheduler_broker_connected')) === 0,
      10_000,
      'the broker to be reported down',
    );
    proxy.heal();
    await eventually(
      async () => (await current('scheduler_broker_reconnects_total')) === before + 1,
      20_000,
      'the reconnect to be counted',
    );
    assert.equal(await current('scheduler_broker_connected'), 1);
  });
});

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { Context } from 'koa';
import { authorize } from '../../src/http/app.js';
import {
  cleanUp,
  isolatedEnv,
  LogCapture,
  startTestService,
  stopAllServices,
  uuid,
  type ServiceUnderTest,
} from '../support/harness.js';

const TOKEN = 'access-test-token-7f3a9c2e51';
const WRONG_HEADER_TOKEN = 'wrong-header-token-1b2c3d4e';
const WRONG_QUERY_TOKEN = 'wrong-query-token-9e8d7c6b';

async function status(url: string, headers: Record<string, string> = {}): Promise<number> {
  const response = await fetch(url, { headers });
  await response.body?.cancel();
  return response.status;
}

/** Everything the service logged, as one string to search. */
const allLogs = (sut: ServiceUnderTest) => JSON.stringify(sut.logs.lines);

describe('with SCHEDULER_API_TOKEN set', () => {
  const env = isolatedEnv({ SCHEDULER_API_TOKEN: TOKEN });
  let sut: ServiceUnderTest;
  const bearer = (token: string) => ({ authorization: `Bearer ${token}` });

  before(async () => {
    sut = await startTestService(env);
  });
  after(async () => {
    await stopAllServices();
    await cleanUp(env);
  });

  it('answers a request without a token with 401, the error body and a challenge', async () => {
    const response = await fetch(`${sut.baseUrl}/jobs/${uuid()}`);
    assert.equal(response.status, 401);
    assert.equal(response.headers.get('www-authenticate'), 'Bearer');
    const body = (await response.json()) as { error: { code: string; message: string } };
    assert.equal(body.error.code, 'unauthorized');
    assert.match(body.error.message, /bearer token/);
  });

  it('refuses a wrong bearer token on /jobs, /schedules, /debug and /metrics', async () => {
    for (const path of [`/jobs/${uuid()}`, '/jobs', '/schedules', '/debug', '/metrics']) {
      assert.equal(await status(`${sut.baseUrl}${path}`, bearer(WRONG_HEADER_TOKEN)), 401, path);
      assert.equal(await status(`${sut.baseUrl}${path}`), 401, path);
    }
  });

  it('lets the right bearer token through (404 for an unknown job)', async () => {
    assert.equal(await status(`${sut.baseUrl}/jobs/${uuid()}`, bearer(TOKEN)), 404);
    assert.equal(await status(`${sut.baseUrl}/metrics`, bearer(TOKEN)), 200);
    // The scheme is case-insensitive (RFC 9110).
    assert.equal(
      await status(`${sut.baseUrl}/jobs/${uuid()}`, { authorization: `bearer ${TOKEN}` }),
      404,
    );
  });

  it('takes the query token on the inspector page and its stream', async () => {
    const page = await fetch(`${sut.baseUrl}/debug?token=${TOKEN}`);
    assert.equal(page.status, 200);
    assert.match(page.headers.get('content-type') ?? '', /text\/html/);
    await page.body?.cancel();

    const abort = new AbortController();
    const stream = await fetch(`${sut.baseUrl}/debug/events?token=${TOKEN}`, {
      signal: abort.signal,
    });
    assert.equal(stream.status, 200);
    assert.match(stream.headers.get('content-type') ?? '', /text\/event-stream/);
    abort.abort();
    await stream.body?.cancel().catch(() => {});

    assert.equal(await status(`${sut.baseUrl}/debug?token=${WRONG_QUERY_TOKEN}`), 401);
  });

  it('does not take the query token outside /debug', async () => {
    assert.equal(await status(`${sut.baseUrl}/jobs/${uuid()}?token=${TOKEN}`), 401);
    assert.equal(await status(`${sut.baseUrl}/metrics?token=${TOKEN}`), 401);
  });

  it('leaves the health routes and / open', async () => {
    for (const path of ['/health', '/health/ready', '/']) {
      assert.equal(await status(`${sut.baseUrl}${path}`), 200, path);
    }
  });

  it('logs a refusal with its reason but never the token, a wrong one or the query', async () => {
    const before = sut.logs.lines.length;
    await status(`${sut.baseUrl}/debug/jobs?token=${WRONG_QUERY_TOKEN}&state=pending`, {
      ...bearer(WRONG_HEADER_TOKEN),
    });
    await status(`${sut.baseUrl}/jobs?token=${TOKEN}`);
    const refusals = sut.logs.lines.slice(before).filter((l) => l['msg'] === 'unauthorized');
    assert.equal(refusals.length, 2);
    assert.deepEqual(
      refusals.map((l) => [l['path'], l['reason']]),
      [
        ['/debug/jobs', 'wrong token'],
        ['/jobs', 'no token'],
      ],
    );

    const logged = allLogs(sut);
    for (const secret of [TOKEN, WRONG_HEADER_TOKEN, WRONG_QUERY_TOKEN, 'token=']) {
      assert.ok(!logged.includes(secret), `the logs contain ${secret}`);
    }
  });
});

describe('without SCHEDULER_API_TOKEN', () => {
  const env = isolatedEnv();
  let sut: ServiceUnderTest;

  before(async () => {
    sut = await startTestService(env);
  });
  after(async () => {
    await stopAllServices();
    await cleanUp(env);
  });

  it('answers a loopback client', async () => {
    assert.equal(await status(`${sut.baseUrl}/jobs/${uuid()}`), 404);
    assert.equal(await status(`${sut.baseUrl}/metrics`), 200);
  });
});

describe('authorize, the token rule on its own', () => {
  /** The parts of a Koa context the rule reads. */
  function fakeContext(ip: string, path = '/jobs', headers: Record<string, string> = {}) {
    const query = Object.fromEntries(new URLSearchParams(path.split('?')[1] ?? ''));
    const set: Record<string, string> = {};
    const ctx = {
      method: 'GET',
      path: path.split('?')[0],
      query,
      request: { ip },
      req: { socket: { remoteAddress: ip } },
      get: (name: string) => headers[name.toLowerCase()] ?? '',
      set: (name: string, value: string) => (set[name] = value),
    };
    return ctx as unknown as Context;
  }

  async function decide(apiToken: string | undefined, ctx: Context): Promise<number> {
    const logs = new LogCapture();
    let passed = false;
    try {
      await authorize({ apiToken, logger: logs.logger })(ctx, async () => {
        passed = true;
      });
    } catch (err) {
      return (err as { status: number }).status;
    }
    return passed ? 200 : 0;
  }

  it('refuses 10.0.0.5 and ::ffff:10.0.0.5 when no token is configured', async () => {
    assert.equal(await decide(undefined, fakeContext('10.0.0.5')), 401);
    assert.equal(await decide(undefined, fakeContext('::ffff:10.0.0.5')), 401);
    assert.equal(await decide(undefined, fakeContext('fd00::2')), 401);
    assert.equal(await decide(undefined, fakeContext('')), 401);
  });

  it('answers 127.0.0.1, 127.1.2.3, ::1 and ::ffff:127.0.0.1 without a token', async () => {
    for (const ip of ['127.0.0.1', '127.1.2.3', '::1', '::ffff:127.0.0.1']) {
      assert.equal(await decide(undefined, fakeContext(ip)), 200, ip);
    }
  });

  it('with a token, refuses a loopback client that has none', async () => {
    assert.equal(await decide(TOKEN, fakeContext('127.0.0.1')), 401);
    assert.equal(
      await decide(TOKEN, fakeContext('10.0.0.5', '/jobs', { authorization: `Bearer ${TOKEN}` })),
      200,
    );
  });

  it('takes the query token on /debug and below, not on /debugger', async () => {
    assert.equal(await decide(TOKEN, fakeContext('10.0.0.5', `/debug?token=${TOKEN}`)), 200);
    assert.equal(await decide(TOKEN, fakeContext('10.0.0.5', `/debug/x?token=${TOKEN}`)), 200);
    assert.equal(await decide(TOKEN, fakeContext('10.0.0.5', `/debugger?token=${TOKEN}`)), 401);
  });

  it('refuses a token that differs only in length or by a prefix', async () => {
    for (const given of [TOKEN.slice(0, -1), `${TOKEN}x`, `${TOKEN} extra`, '']) {
      const ctx = fakeContext('10.0.0.5', '/jobs', { authorization: `Bearer ${given}` });
      assert.equal(await decide(TOKEN, ctx), 401, JSON.stringify(given));
    }
  });
});

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ConfigError, loadConfig } from '../../config/env.js';
import { redactUrl } from '../../src/broker/broker.js';
import { createLogger, createScrubber, secretsOf, type ConsoleOutput } from '../../src/logger.js';

const AMQP_PASSWORD = 's3cr3t-wrong';
const PG_PASSWORD = 'pg-s3cr3t';
const API_TOKEN = 'api-token-0123456789abcdef';

/** Console output kept in memory, colours taken out. */
function memoryConsole(): ConsoleOutput & { lines: string[]; text(): string } {
  const lines: string[] = [];
  const plain = (line: string) => line.replace(/\x1b\[[0-9;]*m/g, '');
  return { lines, write: (line: string) => lines.push(plain(line)), text: () => lines.join('') };
}

const logConfig = (extra: Partial<ReturnType<typeof loadConfig>['log']> = {}) => ({
  ...loadConfig({}).log,
  level: 'debug' as const,
  ...extra,
});

describe('createScrubber', () => {
  const scrub = createScrubber([AMQP_PASSWORD, PG_PASSWORD, API_TOKEN]);

  it('hides the password of any URL and keeps the rest of it', () => {
    assert.equal(
      scrub('"cannot connect to amqp://guest:x9@127.0.0.1:5672/vhost"'),
      '"cannot connect to amqp://guest:***@127.0.0.1:5672/vhost"',
    );
    assert.equal(
      scrub('postgresql://app:hunter2@db:5432/x and amqps://u:p@h'),
      'postgresql://app:***@db:5432/x and amqps://u:***@h',
    );
  });

  it('leaves a host:port URL without credentials as it is', () => {
    const line = '"see http://localhost:8001/jobs and mail ops@example.com"';
    assert.equal(scrub(line), line);
  });

  it('hides query tokens, password= pairs and bearer credentials', () => {
    assert.equal(scrub('GET /debug?token=abc123&x=1'), 'GET /debug?token=***&x=1');
    assert.equal(scrub('host=db password=hunter2 user=x'), 'host=db password=*** user=x');
    assert.equal(scrub('Authorization: Bearer abcdefgh12345'), 'Authorization: Bearer ***');
    assert.equal(scrub('Bearer token is required'), 'Bearer token is required');
  });

  it('hides secret fields at any depth, such as a config hung on an error', () => {
    const line = JSON.stringify({
      err: { connection: { user: 'u', password: 'hunter2', apiToken: 'abc' } },
      req: { headers: { Authorization: 'Basic dTpw', cookie: 'sid=1', accept: 'x' } },
    });
    assert.deepEqual(JSON.parse(scrub(line)), {
      err: { connection: { user: 'u', password: '***', apiToken: '***' } },
      req: { headers: { Authorization: '***', cookie: '***', accept: 'x' } },
    });
    const escaped = JSON.stringify({ token: 'a\\"b', next: 'kept' });
    assert.deepEqual(JSON.parse(scrub(escaped)), { token: '***', next: 'kept' });
  });

  it('hides each configured secret, also JSON-escaped or percent-encoded', () => {
    assert.equal(scrub(`{"msg":"login ${PG_PASSWORD} failed"}`), '{"msg":"login *** failed"}');
    assert.equal(scrub(`"${API_TOKEN}${API_TOKEN}"`), '"******"');
    const quoted = createScrubber(['pa"ss\\word']);
    assert.equal(quoted(JSON.stringify({ msg: 'x pa"ss\\word y' })), '{"msg":"x *** y"}');
    const encoded = createScrubber(['p@ss/word']);
    assert.equal(encoded('"raw p@ss/word, encoded p%40ss%2Fword"'), '"raw ***, encoded ***"');
  });

  it('does not search free text for secrets shorter than 6 characters', () => {
    const short = createScrubber(['guest']);
    assert.equal(short('"user guest"'), '"user guest"');
    assert.equal(short('"amqp://guest:guest@h"'), '"amqp://guest:***@h"');
  });

  it('costs a fraction of a log line on a line with nothing to hide', () => {
    const lines = Array.from({ length: 1000 }, (_, i) =>
      JSON.stringify({
        level: 'info',
        time: new Date(1_700_000_000_000 + i).toISOString(),
        service: 'job_scheduler',
        job_id: `3b6d1c9e-1f7e-4a52-9b7a-${String(i).padStart(12, '0')}`,
        job_type: 'lesson_reminder',
        attempt: 1,
        durationMs: i,
        msg: 'job succeeded',
      }),
    );
    const rounds = 200_000;
    for (let i = 0; i < 20_000; i++) scrub(lines[i % 1000]!);
    const started = process.hrtime.bigint();
    for (let i = 0; i < rounds; i++) scrub(lines[i % 1000]!);
    const nsPerLine = Number(process.hrtime.bigint() - started) / rounds;
    // About 250 ns here; the bound leaves room for a loaded CI machine.
    assert.ok(nsPerLine < 2000, `${nsPerLine.toFixed(0)} ns per line`);
  });
});

describe('redactUrl (broker messages)', () => {
  it('hides the password of every URL in a message', () => {
    assert.equal(
      redactUrl('from amqp://a:x1@h1/ to amqp://b:x2@h2/'),
      'from amqp://a:***@h1/ to amqp://b:***@h2/',
    );
  });
});

describe('secretsOf', () => {
  it('names the database password, the API token and the broker password, decoded too', () => {
    const config = loadConfig({
      SCHEDULER_POSTGRES_PASSWORD: PG_PASSWORD,
      SCHEDULER_API_TOKEN: API_TOKEN,
      RABBITMQ_URL: 'amqp://guest:s3cr%2Ft@127.0.0.1:5672/',
    });
    const expected = [API_TOKEN, PG_PASSWORD, 's3cr%2Ft', 's3cr/t'];
    assert.deepEqual(secretsOf(config).sort(), expected.sort());
  });
});

describe('createLogger', () => {
  it('logs an error whose message and cause hold a broker URL with the password hidden', () => {
    const out = memoryConsole();
    const { logger } = createLogger(logConfig(), { secrets: [AMQP_PASSWORD], console: out });
    const url = `amqp://guest:${AMQP_PASSWORD}@127.0.0.1:5672/`;
    const cause = Object.assign(new Error(`connect ECONNREFUSED ${url}`), { url });
    logger.error({ err: new Error(`cannot set up RabbitMQ at ${url}`, { cause }) }, 'broker error');

    assert.equal(out.lines.length, 1);
    const line = JSON.parse(out.lines[0]!) as { err: Record<string, string>; msg: string };
    assert.ok(!out.text().includes(AMQP_PASSWORD), out.text());
    assert.equal(line.msg, 'broker error');
    const hidden = /amqp:\/\/guest:\*\*\*@127\.0\.0\.1/.source;
    assert.match(line.err['message']!, new RegExp(`cannot set up RabbitMQ at ${hidden}`));
    assert.match(line.err['message']!, /ECONNREFUSED/); // the cause is kept
    const causedBy = new RegExp(`caused by: Error: connect ECONNREFUSED ${hidden}`);
    assert.match(line.err['stack']!, causedBy);
  });

  it('replaces fields that hold secrets whatever their value', () => {
    const out = memoryConsole();
    const { logger } = createLogger(logConfig(), { console: out });
    logger.info(
      {
        password: 'p',
        token: 't',
        headers: { Authorization: 'Bearer x', Cookie: 'c', accept: 'text/html' },
      },
      'request',
    );
    const line = JSON.parse(out.lines[0]!) as Record<string, unknown>;
    assert.equal(line['password'], '***');
    assert.equal(line['token'], '***');
    assert.deepEqual(line['headers'], { Authorization: '***', Cookie: '***', accept: 'text/html' });
  });

  it('binds job fields on a child logger', () => {
    const out = memoryConsole();
    const { logger } = createLogger(logConfig(), { console: out });
    logger.child({ job_id: 'j-1', job_type: 'file_cleanup', attempt: 2 }).info('job succeeded');
    const line = JSON.parse(out.lines[0]!) as Record<string, unknown>;
    assert.deepEqual(
      [line['job_id'], line['job_type'], line['attempt'], line['level'], line['service']],
      ['j-1', 'file_cleanup', 2, 'info', 'job_scheduler'],
    );
  });

  it('writes human-readable console lines with LOG_PRETTY', () => {
    const out = memoryConsole();
    const { logger } = createLogger(logConfig({ pretty: true }), {
      console: out,
      secrets: [PG_PASSWORD],
    });
    logger.info({ job_id: 'j-1' }, `ready with ${PG_PASSWORD}`);
    const text = out.text();
    assert.ok(!text.trimStart().startsWith('{'), text);
    assert.match(text, /INFO.*ready with \*\*\*/);
    assert.match(text, /job_id: "j-1"/);
  });

  it('writes human-readable console lines with LOG_JSON=false', () => {
    const out = memoryConsole();
    const { logger } = createLogger(logConfig({ json: false }), { console: out });
    logger.warn('careful');
    assert.match(out.text(), /WARN.*careful/);
  });

  it('falls back to JSON with a warning when pino-pretty is missing (production image)', () => {
    const out = memoryConsole();
    const missing = () => {
      throw Object.assign(new Error("Cannot find module 'pino-pretty'\nRequire stack:\n- x"), {
        code: 'MODULE_NOT_FOUND',
      });
    };
    const { logger } = createLogger(logConfig({ pretty: true }), {
      console: out,
      loadPretty: missing,
    });
    logger.info('after the warning');
    const lines = out.lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.equal(lines.length, 2);
    assert.equal(lines[0]!['level'], 'warn');
    assert.match(String(lines[0]!['msg']), /pino-pretty is not installed/);
    assert.equal(lines[0]!['reason'], "Cannot find module 'pino-pretty'");
    assert.equal(lines[1]!['msg'], 'after the warning');
  });

  it('writes nothing to the console with LOG_CONSOLE=false', () => {
    const out = memoryConsole();
    const { logger } = createLogger(logConfig({ console: false }), { console: out });
    logger.error('nowhere');
    assert.equal(out.lines.length, 0);
  });

  it('stops start-up naming LOG_DIR when the folder cannot be made', () => {
    const blocker = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'log-')), 'a-file');
    fs.writeFileSync(blocker, '');
    assert.throws(
      () =>
        createLogger(logConfig({ dir: path.join(blocker, 'logs') }), { console: memoryConsole() }),
      (err: unknown) => err instanceof ConfigError && /^LOG_DIR: cannot write/.test(err.message),
    );
    fs.rmSync(path.dirname(blocker), { recursive: true, force: true });
  });
});

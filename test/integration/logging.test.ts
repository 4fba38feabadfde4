import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { loadConfig } from '../../config/env.js';
import { createLogger, LOG_FILE_NAME } from '../../src/logger.js';
import { freePort, ServiceProcess } from '../support/child.js';
import { cleanUp, eventually, isolatedEnv, RABBITMQ_URL, uuid } from '../support/harness.js';

const MIB = 1024 * 1024;

const tempDir = () => fs.mkdtempSync(path.join(os.tmpdir(), 'scheduler-logs-'));

/** The files of a log folder, oldest first, with their lines' sequence numbers. */
function readLogFolder(dir: string) {
  const names = fs.readdirSync(dir).sort((a, b) => backupNumber(b) - backupNumber(a));
  return names.map((name) => {
    const text = fs.readFileSync(path.join(dir, name), 'utf8');
    const seqs = text
      .split('\n')
      .filter((line) => line !== '')
      .map((line) => (JSON.parse(line) as { seq?: number }).seq)
      .filter((seq): seq is number => seq !== undefined);
    return { name, size: Buffer.byteLength(text), seqs };
  });
}

/** `scheduler.log` is 0, `scheduler.log.3` is 3. */
const backupNumber = (name: string) => Number(/\.log\.(\d+)$/.exec(name)?.[1] ?? 0);

/** Logs `count` lines of about 300 bytes, numbered from `first`, in one synchronous burst. */
function fill(dir: string, first: number, count: number, backupCount: number) {
  const { logger, close } = createLogger({
    ...loadConfig({}).log,
    level: 'info',
    console: false,
    dir,
    maxFileSizeMb: 1,
    backupCount,
  });
  const pad = 'x'.repeat(220);
  for (let seq = first; seq < first + count; seq++) logger.info({ seq, pad }, 'filler');
  return close();
}

function assertContiguous(seqs: number[], last: number) {
  assert.equal(seqs.at(-1), last, 'the newest line is last');
  for (let i = 1; i < seqs.length; i++) {
    assert.equal(seqs[i], seqs[i - 1]! + 1, `gap at ${seqs[i]}`);
  }
}

describe('log files in LOG_DIR', () => {
  const dirs: string[] = [];
  after(() => {
    for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('rolls a 4.5 MB burst over at 1 MiB, keeping LOG_BACKUP_COUNT backups', async () => {
    const dir = tempDir();
    dirs.push(dir);
    await fill(dir, 0, 15_000, 2);

    const files = readLogFolder(dir);
    assert.deepEqual(
      files.map((f) => f.name),
      [`${LOG_FILE_NAME}.2`, `${LOG_FILE_NAME}.1`, LOG_FILE_NAME],
    );
    for (const file of files) assert.ok(file.size <= MIB, `${file.name}: ${file.size} bytes`);
    // Full files roll over within one line of the limit.
    for (const file of files.slice(0, 2)) assert.ok(file.size > MIB - 400, `${file.name}`);
    // Oldest to newest without a gap: nothing lost between files, nothing left unflushed.
    assertContiguous(
      files.flatMap((f) => f.seqs),
      14_999,
    );
  });

  it('goes on from the files of an earlier run and still keeps only LOG_BACKUP_COUNT', async () => {
    const dir = tempDir();
    dirs.push(dir);
    await fill(dir, 0, 5_000, 2);
    await fill(dir, 5_000, 5_000, 2);

    const files = readLogFolder(dir);
    assert.equal(files.length, 3);
    for (const file of files) assert.ok(file.size <= MIB, `${file.name}: ${file.size} bytes`);
    assertContiguous(
      files.flatMap((f) => f.seqs),
      9_999,
    );
  });

  it('with LOG_BACKUP_COUNT=0 keeps the active file only, within the limit', async () => {
    const dir = tempDir();
    dirs.push(dir);
    await fill(dir, 0, 12_000, 0);

    const files = readLogFolder(dir);
    assert.deepEqual(
      files.map((f) => f.name),
      [LOG_FILE_NAME],
    );
    assert.ok(files[0]!.size <= MIB);
    assertContiguous(files[0]!.seqs, 11_999);
  });
});

describe('a library error that quotes a URL with its password', () => {
  it('reaches the log file and the console with the password hidden', async () => {
    const dir = tempDir();
    const url = 'http://svc:pw@127.0.0.1:1/';
    // undici (Node's fetch) puts the whole URL, password included, into its error.
    const err = await fetch(url).then(
      () => assert.fail('fetch with credentials in the URL should fail'),
      (e: unknown) => e as Error,
    );
    assert.ok(err.message.includes(url), err.message);

    const lines: string[] = [];
    const { logger, close } = createLogger(
      { ...loadConfig({}).log, level: 'info', dir },
      { console: { write: (line) => lines.push(line) } },
    );
    logger.error({ err: new Error('probe failed', { cause: err }) }, 'probe failed');
    await close();

    const file = fs.readFileSync(path.join(dir, LOG_FILE_NAME), 'utf8');
    fs.rmSync(dir, { recursive: true, force: true });
    for (const [where, text] of [
      ['file', file],
      ['console', lines.join('')],
    ] as const) {
      assert.ok(!text.includes('svc:pw@'), `${where}: ${text}`);
      assert.match(text, /includes credentials: http:\/\/svc:\*\*\*@127\.0\.0\.1:1\//, where);
    }
  });
});

describe('secrets in the logs of the real service', () => {
  const TOKEN = 'logging-test-token-5d1e7a93c0';
  const WRONG_HEADER_TOKEN = 'wrong-header-token-0a9b8c7d';
  const WRONG_QUERY_TOKEN = 'wrong-query-token-6f5e4d3c';
  const PG_PASSWORD = 'pg-s3cr3t';
  const AMQP_PASSWORD = 's3cr3t-wrong';
  const SECRETS = [TOKEN, WRONG_HEADER_TOKEN, WRONG_QUERY_TOKEN, PG_PASSWORD, AMQP_PASSWORD];
  const badBrokerUrl = RABBITMQ_URL.replace(/\/\/([^:@/]+)(:[^@/]*)?@/, `//$1:${AMQP_PASSWORD}@`);

  const started: { child: ServiceProcess; env: Record<string, string>; dir: string }[] = [];
  after(async () => {
    for (const { child, env, dir } of started) {
      if (child.child.exitCode === null && child.child.signalCode === null) await child.kill();
      await cleanUp(env);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  /**
   * Runs the service until it has failed to connect `retries` times, sends
   * requests with wrong tokens in the header and the query, stops it with
   * SIGTERM and returns everything it wrote: stdout, stderr and LOG_DIR.
   */
  async function runAndCollect(name: string, extra: Record<string, string>, waitFor: RegExp) {
    const dir = tempDir();
    const env = isolatedEnv({
      SCHEDULER_API_TOKEN: TOKEN,
      SCHEDULER_POSTGRES_PASSWORD: PG_PASSWORD,
      RABBITMQ_URL: badBrokerUrl,
      LOG_DIR: dir,
      ...extra,
    });
    const child = await ServiceProcess.start(env, name);
    started.push({ child, env, dir });

    await eventually(
      () => child.logLines().filter((l) => waitFor.test(String(l['msg']))).length >= 2,
      30_000,
      `two "${waitFor.source}" lines in ${child.logFile}`,
    );
    for (const target of [`/jobs/${uuid()}`, '/debug', '/debug/events']) {
      const response = await fetch(`${child.baseUrl}${target}?token=${WRONG_QUERY_TOKEN}`, {
        headers: { authorization: `Bearer ${WRONG_HEADER_TOKEN}` },
      });
      assert.equal(response.status, 401, target);
      await response.body?.cancel();
    }

    child.child.kill('SIGTERM');
    const exit = await child.exited;
    assert.equal(exit.code, 0, `exit after SIGTERM: ${JSON.stringify(exit)}`);

    const stdout = fs.readFileSync(child.logFile, 'utf8');
    const files = fs.readdirSync(dir).map((f) => fs.readFileSync(path.join(dir, f), 'utf8'));
    return { stdout, file: files.join('') };
  }

  function assertNoSecrets(text: string, where: string) {
    for (const secret of SECRETS) {
      assert.ok(!text.includes(secret), `${where} contains ${secret}`);
    }
    assert.ok(!text.includes('token='), `${where} contains a query token`);
  }

  it('PostgreSQL unreachable: retries, refusals and shutdown logged without a secret', async () => {
    const closedPort = String(await freePort());
    const { stdout, file } = await runAndCollect(
      'logging-secrets-postgres',
      { SCHEDULER_POSTGRES_PORT: closedPort },
      /cannot reach PostgreSQL/,
    );
    for (const [where, text] of [
      ['stdout', stdout],
      ['LOG_DIR', file],
    ] as const) {
      assertNoSecrets(text, where);
      assert.match(text, /cannot reach PostgreSQL; retrying/, where);
      assert.match(text, /ECONNREFUSED/, where);
      assert.equal(text.match(/"msg":"unauthorized"/g)?.length, 3, where);
      // Closing the logger flushed the last line to the file as well.
      assert.match(text, /"msg":"stopped"/, where);
    }
  });

  it('RabbitMQ refusing the password: the broker errors are logged without it', async () => {
    const { stdout, file } = await runAndCollect(
      'logging-secrets-rabbitmq',
      {},
      /cannot reach RabbitMQ/,
    );
    for (const [where, text] of [
      ['stdout', stdout],
      ['LOG_DIR', file],
    ] as const) {
      assertNoSecrets(text, where);
      assert.match(text, /cannot set up RabbitMQ at amqps?:\/\/[^:@/]+:\*\*\*@/, where);
      assert.match(text, /ACCESS.REFUSED/, where);
      assert.equal(text.match(/"msg":"unauthorized"/g)?.length, 3, where);
      assert.match(text, /"msg":"stopped"/, where);
    }
  });
});

import { randomBytes, randomUUID } from 'node:crypto';
import { Writable } from 'node:stream';
import type { AddressInfo } from 'node:net';
import amqp from 'amqplib';
import pg from 'pg';
import pino, { type Logger } from 'pino';
import { loadConfig, type Config } from '../../config/env.js';
import { startService, type RunningService } from '../../src/service.js';

export const RABBITMQ_URL = process.env['RABBITMQ_URL'] ?? 'amqp://guest:guest@127.0.0.1:5672/';
export const TEST_DB = process.env['TEST_POSTGRES_DB'] ?? 'quantutor_scheduler_test';

/**
 * Environment for one isolated service under test: its own Postgres schema and
 * its own exchange and queue names, so test files run side by side.
 */
export function isolatedEnv(extra: Record<string, string> = {}): Record<string, string> {
  const id = randomBytes(4).toString('hex');
  return {
    PORT: '0',
    HOST: '127.0.0.1',
    SCHEDULER_POSTGRES_DB: TEST_DB,
    SCHEDULER_POSTGRES_SCHEMA: `t_${id}`,
    RABBITMQ_URL,
    RABBITMQ_EXCHANGE: `t.${id}.jobs`,
    RABBITMQ_QUEUE_NAME: `t.${id}.results`,
    RABBITMQ_COMMANDS_QUEUE: `t.${id}.commands`,
    RABBITMQ_DEAD_LETTER_QUEUE: `t.${id}.dead-letter`,
    LOG_LEVEL: 'debug',
    COMMIT_WINDOW_MS: '2',
    MFA_EXPIRY_JOB_INTERVAL_MINUTES: '1440',
    // The daily clean-ups would add an execute message to a test that runs
    // across their hour; the tests of schedules turn them on themselves.
    FILE_CLEANUP_JOB_ENABLED: 'false',
    REGISTRATION_EXPIRY_JOB_ENABLED: 'false',
    RELATIONSHIP_CONSISTENCY_JOB_ENABLED: 'false',
    ...extra,
  };
}

/** Log lines a test can look at. */
export class LogCapture {
  readonly lines: Record<string, unknown>[] = [];
  readonly logger: Logger;

  constructor(level = 'debug') {
    const sink = new Writable({
      write: (chunk: Buffer, _encoding, done) => {
        for (const line of chunk.toString().split('\n')) {
          if (line.trim()) this.lines.push(JSON.parse(line) as Record<string, unknown>);
        }
        done();
      },
    });
    this.logger = pino({ level }, sink);
  }

  find(msg: string | RegExp): Record<string, unknown>[] {
    return this.lines.filter((l) =>
      typeof msg === 'string' ? l['msg'] === msg : msg.test(String(l['msg'])),
    );
  }
}

export interface ServiceUnderTest {
  config: Config;
  env: Record<string, string>;
  service: RunningService;
  logs: LogCapture;
  baseUrl: string;
  pool: pg.Pool;
  stop(): Promise<void>;
}

const running = new Set<ServiceUnderTest>();

/** Stops every service a test file started and left running (after a failed assertion). */
export async function stopAllServices(): Promise<void> {
  for (const sut of [...running]) await sut.stop();
}

/** Starts the service in this process against the real PostgreSQL and RabbitMQ. */
export async function startTestService(env: Record<string, string>): Promise<ServiceUnderTest> {
  const config = loadConfig(env, '0.0.0-test');
  const logs = new LogCapture();
  const service = await startService(config, logs.logger);
  try {
    await service.started;
  } catch (err) {
    await service.stop();
    throw err;
  }
  const port = (service.server.address() as AddressInfo).port;
  const pool = testPool();
  const sut: ServiceUnderTest = {
    config,
    env,
    service,
    logs,
    baseUrl: `http://127.0.0.1:${port}`,
    pool,
    async stop() {
      if (!running.delete(sut)) return;
      await service.stop();
      await pool.end();
    },
  };
  running.add(sut);
  return sut;
}

/** A small pool on the test database, for tests that look at or seed rows directly. */
export function testPool(): pg.Pool {
  return new pg.Pool({ host: '127.0.0.1', user: 'postgres', database: TEST_DB, max: 2 });
}

/** Drops what an isolated environment created: its schema, queues and exchanges. */
export async function cleanUp(env: Record<string, string>): Promise<void> {
  const pool = testPool();
  try {
    await pool.query(`drop schema if exists "${env['SCHEDULER_POSTGRES_SCHEMA']}" cascade`);
  } catch {
    // the database may not exist yet when start-up failed early
  } finally {
    await pool.end();
  }
  const connection = await amqp.connect(RABBITMQ_URL);
  const channel = await connection.createChannel();
  channel.on('error', () => {});
  for (const q of [
    'RABBITMQ_QUEUE_NAME',
    'RABBITMQ_COMMANDS_QUEUE',
    'RABBITMQ_DEAD_LETTER_QUEUE',
  ]) {
    await channel.deleteQueue(env[q] ?? '').catch(() => {});
  }
  const exchange = env['RABBITMQ_EXCHANGE'] ?? '';
  await channel.deleteExchange(exchange).catch(() => {});
  await channel.deleteExchange(`${exchange}.dead-letter`).catch(() => {});
  await channel.close().catch(() => {});
  await connection.close();
}

/** Polls until `check` returns a value other than undefined/false, or fails after `timeoutMs`. */
export async function eventually<T>(
  check: () => Promise<T | undefined | false> | T | undefined | false,
  timeoutMs = 10_000,
  what = 'condition',
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value !== undefined && value !== false) return value;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`, { cause: last });
    }
    await new Promise((r) => setTimeout(r, 25));
  }
}

export async function getJson(
  url: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: any }> {
  const response = await fetch(url, { headers });
  return { status: response.status, body: await response.json() };
}

export const uuid = () => randomUUID();

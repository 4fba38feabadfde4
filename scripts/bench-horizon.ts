/**
 * Memory and start-up with many jobs far ahead: only the horizon lives.
 *
 *   npm run bench:horizon -- [far=100000] [near=20]
 *
 * Runs the real service twice as a child process against the local PostgreSQL
 * and RabbitMQ: once with `near` jobs due in a few seconds only, once with the
 * same plus `far` jobs due days ahead (inserted in bulk). Reports the time to
 * ready, the service's resident memory once the near jobs are done, and how
 * late the near jobs ran. Everything it creates is dropped at the end.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import pg from 'pg';
import pino from 'pino';
import { initialTransition } from 'xstate';
import { loadConfig } from '../config/env.js';
import { jobMachine } from '../machines/job.machine.js';
import { columnsOf } from '../src/runtime/job-columns.js';
import { openDatabase } from '../src/store/database.js';
import { benchEnv, dropBenchState } from './bench-support.js';

const far = Number(process.argv[2] ?? 100_000);
const near = Number(process.argv[3] ?? 20);
const DAY = 86_400_000;

/** Inserts `count` pending jobs due from `firstAt`, one second apart, in one statement. */
async function seed(pool: pg.Pool, schema: string, count: number, firstAt: number) {
  const [template] = initialTransition(jobMachine, {
    jobId: '00000000-0000-4000-8000-000000000000',
    jobType: 'lesson_reminder',
    scheduledFor: firstAt,
    expiresAt: null,
    timeoutSeconds: 300,
    maxAttempts: 3,
    minRetryDelayMs: 60_000,
    maxRetryDelayMs: 3_600_000,
    publishRetryDelayMs: 1000,
    metadata: {},
    subject: null,
    anchor: null,
  });
  const snapshot = JSON.stringify(columnsOf(template).snapshot);
  await pool.query(
    `insert into "${schema}".jobs
       (id, job_type, state, attempt, max_attempts, scheduled_for, next_at,
        metadata, snapshot, machine_version)
     select g.id, 'lesson_reminder', 'pending', 0, 3, g.due, g.due, '{}',
            jsonb_set(jsonb_set(jsonb_set($1::jsonb,
              '{context,jobId}', to_jsonb(g.id::text)),
              '{context,dueAt}', to_jsonb((extract(epoch from g.due) * 1000)::bigint)),
              '{context,scheduledFor}', to_jsonb((extract(epoch from g.due) * 1000)::bigint)),
            1
     from (select gen_random_uuid() as id,
                  to_timestamp(($2::bigint + (i - 1) * 1000) / 1000.0) as due
           from generate_series(1, $3::int) as i) as g`,
    [snapshot, firstAt, count],
  );
}

function rssMb(child: ChildProcess): { rss: number; peak: number } {
  const status = readFileSync(`/proc/${child.pid}/status`, 'utf8');
  const kb = (key: string) => Number(new RegExp(`${key}:\\s+(\\d+)`).exec(status)?.[1] ?? 0);
  return { rss: Math.round(kb('VmRSS') / 1024), peak: Math.round(kb('VmHWM') / 1024) };
}

async function waitReady(port: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await fetch(`http://127.0.0.1:${port}/health/ready`).then(
      (r) => r.ok,
      () => false,
    );
    if (ok) return;
    if (Date.now() > deadline) throw new Error('the service did not become ready');
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function run(label: string, farJobs: number) {
  const env = benchEnv('horizon');
  const config = loadConfig({ ...process.env, ...env });
  const schema = config.postgres.schema;
  const database = await openDatabase(config.postgres, pino({ level: 'warn' }));
  await database.close();
  const pool = new pg.Pool({
    host: '127.0.0.1',
    user: 'postgres',
    database: config.postgres.database,
  });

  const seeding = Date.now();
  if (farJobs > 0) await seed(pool, schema, farJobs, Date.now() + 2 * DAY);
  const seededMs = Date.now() - seeding;
  const nearAt = Date.now() + 8000;
  await seed(pool, schema, near, nearAt);

  const started = Date.now();
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  await waitReady(env.PORT, 120_000);
  const readyMs = Date.now() - started;

  // Declared by the service; answer its execute messages from a backend process.
  const backend = spawn(
    process.execPath,
    ['--import', 'tsx', 'scripts/bench-backend.ts', config.rabbitmq.url, config.rabbitmq.exchange],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  await new Promise((resolve) => backend.stdout?.once('data', resolve));

  const done = async () =>
    Number(
      (
        await pool.query(
          `select count(*)::int as n from "${schema}".jobs where state = 'succeeded'`,
        )
      ).rows[0].n,
    );
  while ((await done()) < near) await new Promise((r) => setTimeout(r, 100));
  const late = (
    await pool.query(
      `select max(extract(epoch from finished_at - scheduled_for) * 1000) as ms
       from "${schema}".jobs where state = 'succeeded'`,
    )
  ).rows[0].ms;
  await new Promise((r) => setTimeout(r, 1000));
  const memory = rssMb(child);

  child.kill('SIGTERM');
  backend.kill('SIGTERM');
  await new Promise((resolve) => child.once('exit', resolve));
  await dropBenchState(config, pool);
  await pool.end();

  return {
    run: label,
    far_jobs: farJobs,
    near_jobs: near,
    seed_ms: seededMs,
    start_to_ready_ms: readyMs,
    rss_mb: memory.rss,
    peak_rss_mb: memory.peak,
    near_jobs_latest_ms_after_due: Math.round(Number(late)),
  };
}

const results = [await run('near only', 0), await run('near + far', far)];
console.table(results);
console.log(JSON.stringify(results, null, 2));

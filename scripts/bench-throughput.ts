/**
 * Throughput from due to succeeded through a backend that replies at once.
 *
 *   npm run bench -- [jobs=10000]
 *
 * Starts the service in this process against the local PostgreSQL and
 * RabbitMQ (its own schema and queue names, dropped at the end), sends `jobs`
 * `jobs.schedule` commands all due at one instant a few seconds ahead, plays
 * the backend (consumes `jobs.execute.#`, answers `jobs.completed` at once),
 * and reports jobs per second from the due instant to the last success, the
 * per-job latency from due to succeeded, and the process's peak memory.
 */
import { spawn } from 'node:child_process';
import amqp from 'amqplib';
import pg from 'pg';
import pino from 'pino';
import { loadConfig } from '../config/env.js';
import { startService } from '../src/service.js';
import { benchEnv, dropBenchState } from './bench-support.js';

const jobs = Number(process.argv[2] ?? 10_000);
const env = { ...benchEnv('bench'), PORT: '0' };
const config = loadConfig({ ...process.env, ...env }, 'bench');
const logger = pino({ level: 'warn' });

let peakRss = 0;
const sampler = setInterval(() => (peakRss = Math.max(peakRss, process.memoryUsage().rss)), 50);

const service = await startService(config, logger);
await service.started;
const pool = new pg.Pool({
  host: '127.0.0.1',
  user: 'postgres',
  database: config.postgres.database,
});
const backend = spawn(
  process.execPath,
  [
    '--import',
    'tsx',
    new URL('./bench-backend.ts', import.meta.url).pathname,
    config.rabbitmq.url,
    config.rabbitmq.exchange,
  ],
  { stdio: ['ignore', 'pipe', 'inherit'] },
);
await new Promise((resolve) => backend.stdout?.once('data', resolve));
const connection = await amqp.connect(config.rabbitmq.url);
const channel = await connection.createConfirmChannel();

// Enough lead for every command to be handled before the jobs fall due.
const dueAt = Date.now() + 5000 + jobs * 1.5;
const scheduledFor = new Date(dueAt).toISOString();
const sendStarted = Date.now();
for (let i = 0; i < jobs; i += 1) {
  channel.publish(
    config.rabbitmq.exchange,
    'jobs.schedule',
    Buffer.from(
      JSON.stringify({ job_type: 'lesson_reminder', scheduled_for: scheduledFor, metadata: { i } }),
    ),
    { persistent: true, contentType: 'application/json' },
  );
  if (i % 1000 === 999) await channel.waitForConfirms();
}
await channel.waitForConfirms();

const table = `"${config.postgres.schema}".jobs`;
const count = async (where: string) =>
  Number((await pool.query(`select count(*)::int as n from ${table} where ${where}`)).rows[0].n);

while ((await count('true')) < jobs) await new Promise((r) => setTimeout(r, 100));
const created = Date.now();
if (created > dueAt) console.warn('commands were still being handled when the jobs fell due');
await new Promise((r) => setTimeout(r, Math.max(0, dueAt - Date.now())));
const cpuAtDue = process.cpuUsage();
while ((await count(`state = 'succeeded'`)) < jobs) await new Promise((r) => setTimeout(r, 50));
const cpu = process.cpuUsage(cpuAtDue);

const { rows } = await pool.query(
  `select extract(epoch from max(finished_at) - min(scheduled_for)) * 1000 as span_ms,
          percentile_cont(0.5) within group (order by extract(epoch from finished_at - scheduled_for))
            * 1000 as p50_ms,
          percentile_cont(0.99) within group (order by extract(epoch from finished_at - scheduled_for))
            * 1000 as p99_ms
   from ${table}
   where state = 'succeeded'`,
);
const { span_ms: spanMs, p50_ms: p50, p99_ms: p99 } = rows[0];
const transitions = Number(
  (await pool.query(`select count(*)::int as n from "${config.postgres.schema}".job_transitions`))
    .rows[0].n,
);

console.log(
  JSON.stringify(
    {
      jobs,
      commands_per_s: Math.round(jobs / ((created - sendStarted) / 1000)),
      due_to_all_succeeded_ms: Math.round(Number(spanMs)),
      jobs_per_s: Math.round(jobs / (Number(spanMs) / 1000)),
      latency_p50_ms: Math.round(Number(p50)),
      latency_p99_ms: Math.round(Number(p99)),
      transitions,
      cpu_ms_from_due: Math.round((cpu.user + cpu.system) / 1000),
      peak_rss_mb: Math.round(peakRss / 2 ** 20),
      node: process.version,
    },
    null,
    2,
  ),
);

clearInterval(sampler);
backend.kill('SIGTERM');
await channel.close();
await connection.close();
await service.stop();
await dropBenchState(config, pool);
await pool.end();

import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import amqp from 'amqplib';
import { tickJobId } from '../../src/scheduler/periodic.js';
import { FakeBackend } from '../support/backend.js';
import { ServiceProcess } from '../support/child.js';
import { cleanUp, eventually, isolatedEnv, RABBITMQ_URL, testPool } from '../support/harness.js';

/** One tick every 1.5 s (0.025 minutes). */
const EVERY_MS = 1500;

describe('a short schedule with two service processes on one database', () => {
  const env = isolatedEnv({
    FILE_CLEANUP_JOB_ENABLED: 'true',
    FILE_CLEANUP_JOB_INTERVAL_MINUTES: '0.025',
    MFA_EXPIRY_JOB_ENABLED: 'false',
    REGISTRATION_EXPIRY_JOB_ENABLED: 'false',
    RELATIONSHIP_CONSISTENCY_JOB_ENABLED: 'false',
    LOG_LEVEL: 'info',
  });
  const processes: ServiceProcess[] = [];
  let backend: FakeBackend | undefined;
  after(async () => {
    for (const p of processes) {
      if (p.child.exitCode === null && p.child.signalCode === null) await p.kill();
    }
    await backend?.close();
    await cleanUp(env);
  });

  it('runs each tick exactly once: one job and one execute message per tick instant', async () => {
    // The backend listens before the first tick: a run whose message finds no queue
    // would stay in flight, and the next tick would rightly be skipped.
    const connection = await amqp.connect(RABBITMQ_URL);
    const channel = await connection.createChannel();
    await channel.assertExchange(env['RABBITMQ_EXCHANGE'] ?? '', 'topic', { durable: true });
    await connection.close();
    backend = await FakeBackend.start(env);

    const a = await ServiceProcess.start(env, 'schedules-replica-a');
    processes.push(a);
    await a.ready();
    const b = await ServiceProcess.start(env, 'schedules-replica-b');
    processes.push(b);
    await b.ready();

    // Both instances wait for the same ticks from here on.
    const from = Date.now();
    await new Promise((resolve) => setTimeout(resolve, 7000));
    const stoppedAt = Date.now();
    for (const p of [a, b]) p.child.kill('SIGTERM');
    const exits = await Promise.all([a.exited, b.exited]);
    assert.deepEqual(
      exits.map((e) => e.code),
      [0, 0],
    );

    const pool = testPool();
    try {
      const { rows } = await pool.query<{ id: string; scheduled_for: Date; state: string }>(
        `select id, scheduled_for, state
         from "${env['SCHEDULER_POSTGRES_SCHEMA']}".jobs
         where subject = 'schedule:file_cleanup'
         order by scheduled_for`,
      );
      const ticks = rows.map((r) => r.scheduled_for.getTime());
      assert.equal(new Set(ticks).size, ticks.length, 'one job per tick instant');
      for (const [i, tick] of ticks.entries()) {
        assert.equal(tick % EVERY_MS, 0, 'ticks fall on multiples of the interval');
        assert.equal(rows[i]?.id, tickJobId('file_cleanup', tick));
        if (i > 0) assert.equal(tick - (ticks[i - 1] ?? 0), EVERY_MS, 'no tick left out');
      }
      // Every tick both instances were up for has its job (a tick is handled a few ms late).
      const expected: number[] = [];
      for (let t = Math.ceil(from / EVERY_MS) * EVERY_MS; t < stoppedAt - 250; t += EVERY_MS) {
        expected.push(t);
      }
      assert.ok(expected.length >= 4, `${expected.length} ticks while both were up`);
      for (const t of expected) {
        assert.ok(ticks.includes(t), `tick ${new Date(t).toISOString()} has its job`);
      }

      // Each job due while both were up has had its message; one created at the stop may not.
      const settled = rows.filter((r) => r.scheduled_for.getTime() < stoppedAt - 250);
      await eventually(
        () => settled.every((r) => backend?.executesOf(r.id).length === 1),
        5000,
        'one execute message per job',
      );
      await new Promise((resolve) => setTimeout(resolve, 300));
      for (const r of rows) {
        assert.ok(backend.executesOf(r.id).length <= 1, `job ${r.id} executed at most once`);
      }
      for (const r of settled) {
        assert.equal(backend.executesOf(r.id).length, 1, `job ${r.id} executed once`);
      }
      const executes = backend.received.filter((e) => e.routingKey === 'jobs.execute.file_cleanup');
      assert.ok(executes.length <= rows.length, 'no execute message without a job');

      const { rows: schedule } = await pool.query(
        `select runs, missed, skipped
         from "${env['SCHEDULER_POSTGRES_SCHEMA']}".schedules
         where name = 'file_cleanup'`,
      );
      assert.deepEqual(schedule[0], { runs: rows.length, missed: 0, skipped: 0 });

      const ticked = [a, b].map((p) => p.logLines().filter((l) => l['msg'] === 'schedule ticked'));
      assert.equal(ticked[0]!.length + ticked[1]!.length, rows.length, 'each tick logged once');
    } finally {
      await pool.end();
    }
  });
});

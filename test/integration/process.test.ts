import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { FakeBackend } from '../support/backend.js';
import { FreezableProxy, ServiceProcess } from '../support/child.js';
import { cleanUp, eventually, isolatedEnv, testPool } from '../support/harness.js';

const status = async (url: string) => (await fetch(url)).status;

describe('the service as a process', () => {
  const envs: Record<string, string>[] = [];
  const processes: ServiceProcess[] = [];
  after(async () => {
    for (const p of processes)
      if (p.child.exitCode === null && p.child.signalCode === null) await p.kill();
    for (const env of envs) await cleanUp(env);
  });

  it('a bad environment variable stops start-up with a message naming it', async () => {
    const env = isolatedEnv({ REMINDER_JOB_MAX_RETRIES: 'lots' });
    const service = await ServiceProcess.start(env, 'process-bad-env');
    processes.push(service);
    const { code } = await service.exited;
    assert.notEqual(code, 0);
    const fatal = service.logLines().find((l) => l['level'] === 60);
    assert.match(
      String(fatal?.['msg']),
      /REMINDER_JOB_MAX_RETRIES: expected a whole number \(got "lots"\)/,
    );
  });

  it('serves /health from the first moment and /health/ready 503 while PostgreSQL is unreachable; SIGTERM still exits 0', async () => {
    const env = isolatedEnv({ SCHEDULER_POSTGRES_PORT: '1' });
    const service = await ServiceProcess.start(env, 'process-no-postgres');
    processes.push(service);
    await eventually(
      async () => (await status(`${service.baseUrl}/health`)) === 200,
      10_000,
      '/health',
    );
    const ready = await fetch(`${service.baseUrl}/health/ready`);
    assert.equal(ready.status, 503);
    assert.equal(((await ready.json()) as any).checks.postgres, 'pending');
    service.child.kill('SIGTERM');
    const { code } = await service.exited;
    assert.equal(code, 0);
  });

  it('turns not-ready while RabbitMQ is unreachable and ready again when it is back', async () => {
    const env = isolatedEnv();
    envs.push(env);
    const proxy = await FreezableProxy.start({ host: '127.0.0.1', port: 5672 });
    const service = await ServiceProcess.start(
      { ...env, RABBITMQ_URL: `amqp://guest:guest@127.0.0.1:${proxy.port}/` },
      'process-rabbitmq-outage',
    );
    processes.push(service);
    try {
      await service.ready();
      proxy.cut();
      const down = await eventually(
        async () => {
          const r = await fetch(`${service.baseUrl}/health/ready`);
          return r.status === 503 ? ((await r.json()) as any) : undefined;
        },
        10_000,
        'not ready',
      );
      assert.equal(down.checks.rabbitmq, 'down');
      assert.equal(down.checks.postgres, 'up');
      proxy.heal();
      await service.ready(20_000);
      service.child.kill('SIGTERM');
      assert.equal((await service.exited).code, 0);
    } finally {
      await proxy.close();
    }
  });

  it('SIGTERM turns ready to 503 at once, leaves waiting jobs as they are, and exits 0', async () => {
    const env = isolatedEnv({ SHUTDOWN_GRACE_SECONDS: '15' });
    envs.push(env);
    const service = await ServiceProcess.start(env, 'process-sigterm');
    processes.push(service);
    await service.ready();
    const backend = await FakeBackend.start(env);
    backend.behaviour = () => ({ kind: 'silent' });
    const pool = testPool();
    try {
      const { job_id: id } = await backend.command('jobs.schedule', {
        job_type: 'payment_reminder',
        delay_seconds: 0,
        timeout_seconds: 600,
      });
      const stateOf = async () =>
        (
          await pool.query(
            `select state from "${env['SCHEDULER_POSTGRES_SCHEMA']}".jobs where id = $1`,
            [id],
          )
        ).rows[0]?.state;
      await eventually(async () => (await stateOf()) === 'awaiting-ack', 10_000, 'awaiting-ack');

      const started = Date.now();
      service.child.kill('SIGTERM');
      // The readiness flag flips before anything closes; the server closes last.
      let answer: { status: number; body: any } | undefined;
      while (!answer || answer.status === 200) {
        const response = await fetch(`${service.baseUrl}/health/ready`);
        answer = { status: response.status, body: await response.json() };
      }
      assert.equal(answer.status, 503);
      assert.equal(answer.body.phase, 'stopping');
      const { code } = await service.exited;
      assert.equal(code, 0);
      assert.ok(Date.now() - started < 15_000, 'within the grace period');
      assert.equal(await stateOf(), 'awaiting-ack', 'the job waits on for the next start');
      assert.ok(service.logLines().some((l) => l['msg'] === 'stopped'));
    } finally {
      await backend.close();
      await pool.end();
    }
  });
});

import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { FakeBackend, type Action } from '../support/backend.js';
import { FreezableProxy, ServiceProcess } from '../support/child.js';
import { cleanUp, eventually, isolatedEnv, testPool } from '../support/harness.js';

/**
 * What the backend does, by the role the test gave the job (in its metadata),
 * the attempt, and how often it has seen that attempt.
 */
function behaviour(backend: FakeBackend) {
  return (execute: { body: Record<string, any>; properties: { messageId?: string } }): Action => {
    const role = execute.body.metadata?.role as string;
    const attempt = execute.body.attempt as number;
    const seen = backend.received.filter(
      (e) => e.properties.messageId === execute.properties.messageId,
    );
    switch (role) {
      case 'awaiting':
        return attempt === 1 ? { kind: 'silent' } : { kind: 'complete' };
      case 'doomed':
        return attempt === 1
          ? { kind: 'silent' }
          : { kind: 'fail', error: 'account closed', shouldRetry: false };
      case 'retrying':
        return attempt === 1 ? { kind: 'fail', error: 'try later' } : { kind: 'complete' };
      case 'dispatched':
        // The first copy went out while confirms were cut off; answer the re-publish.
        return seen.length === 1 ? { kind: 'silent' } : { kind: 'complete' };
      default:
        return { kind: 'complete' };
    }
  };
}

describe('recovery after SIGKILL', () => {
  const env = isolatedEnv({
    REMINDER_JOB_TIMEOUT_SECONDS: '4',
    REMINDER_JOB_MIN_RETRY_DELAY_SECONDS: '4',
    PUBLISH_TIMEOUT_SECONDS: '60',
    LOG_LEVEL: 'debug',
  });
  const pool = testPool();
  const schema = env['SCHEDULER_POSTGRES_SCHEMA'];
  let proxy: FreezableProxy | undefined;
  let backend: FakeBackend | undefined;
  const processes: ServiceProcess[] = [];

  after(async () => {
    for (const p of processes) if (p.child.exitCode === null) await p.kill();
    await backend?.close();
    await proxy?.close();
    await pool.end();
    await cleanUp(env);
  });

  const states = async (ids: Record<string, string>) => {
    const { rows } = await pool.query(
      `select id, state, attempt from "${schema}".jobs where id = any($1::uuid[])`,
      [Object.values(ids)],
    );
    const byId = new Map(rows.map((r) => [r.id, r]));
    return Object.fromEntries(
      Object.entries(ids).map(([role, id]) => [role, byId.get(id)?.state as string]),
    );
  };

  it('every job in every waiting state resumes and reaches its right end, none lost', async () => {
    proxy = await FreezableProxy.start({ host: '127.0.0.1', port: 5672 });
    const first = await ServiceProcess.start(
      { ...env, RABBITMQ_URL: `amqp://guest:guest@127.0.0.1:${proxy.port}/` },
      'recovery-first',
    );
    processes.push(first);
    await first.ready();
    backend = await FakeBackend.start(env);
    backend.behaviour = behaviour(backend);

    const schedule = async (role: string, delaySeconds: number) =>
      (
        await backend!.command('jobs.schedule', {
          job_type: 'lesson_reminder',
          delay_seconds: delaySeconds,
          metadata: { role },
        })
      ).job_id as string;
    const ids: Record<string, string> = {
      awaiting: await schedule('awaiting', 0),
      doomed: await schedule('doomed', 0),
      retrying: await schedule('retrying', 0),
      pending: await schedule('pending', 8),
      dispatched: await schedule('dispatched', 1.5),
    };

    await eventually(
      async () => {
        const s = await states(ids);
        return (
          s['awaiting'] === 'awaiting-ack' &&
          s['doomed'] === 'awaiting-ack' &&
          s['retrying'] === 'retrying'
        );
      },
      10_000,
      'jobs in awaiting-ack and retrying',
    );

    // Cut the broker's answers off: the next publish reaches RabbitMQ but is never confirmed.
    proxy.freeze();
    await eventually(
      () => backend!.executesOf(ids['dispatched'] ?? '').length === 1,
      10_000,
      'the dispatched job to reach the broker',
    );
    await new Promise((r) => setTimeout(r, 300));

    const atKill = await states(ids);
    assert.deepEqual(atKill, {
      awaiting: 'awaiting-ack',
      doomed: 'awaiting-ack',
      retrying: 'retrying',
      pending: 'pending',
      dispatched: 'dispatched',
    });
    await first.kill();
    assert.equal((await first.exited).signal, 'SIGKILL');

    const second = await ServiceProcess.start(env, 'recovery-second');
    processes.push(second);
    await second.ready();

    const ends = await eventually(
      async () => {
        const s = await states(ids);
        return Object.values(s).every((state) => ['succeeded', 'dead'].includes(state))
          ? s
          : undefined;
      },
      30_000,
      'every job to finish',
    );
    assert.deepEqual(ends, {
      awaiting: 'succeeded',
      doomed: 'dead',
      retrying: 'succeeded',
      pending: 'succeeded',
      dispatched: 'succeeded',
    });

    const messageIds = (role: string) =>
      backend!.executesOf(ids[role] ?? '').map((e) => e.properties.messageId);
    const id = (role: string, attempt: number) => `${ids[role]}:${attempt}`;
    assert.deepEqual(
      messageIds('dispatched'),
      [id('dispatched', 1), id('dispatched', 1)],
      'the unconfirmed attempt is published again with the same message_id',
    );
    assert.deepEqual(messageIds('awaiting'), [id('awaiting', 1), id('awaiting', 2)]);
    assert.deepEqual(messageIds('doomed'), [id('doomed', 1), id('doomed', 2)]);
    assert.deepEqual(messageIds('retrying'), [id('retrying', 1), id('retrying', 2)]);
    assert.deepEqual(messageIds('pending'), [id('pending', 1)]);

    const resent = backend.executesOf(ids['dispatched'] ?? '');
    assert.notEqual(
      resent[0]?.body.sent_at,
      resent[1]?.body.sent_at,
      'each publish stamps sent_at',
    );

    const restored = second.logLines().find((l) => l['msg'] === 'restored waiting jobs');
    assert.equal(restored?.['restored'], 5);
  });
});

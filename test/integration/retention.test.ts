import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type pg from 'pg';
import { HistoryRetention } from '../../src/store/retention.js';
import {
  cleanUp,
  eventually,
  isolatedEnv,
  startTestService,
  stopAllServices,
  uuid,
  type ServiceUnderTest,
} from '../support/harness.js';

const DAY = 86_400_000;

/**
 * Seeds a job row and its transitions straight into the table, as the
 * service would have left them `age` ms ago. Waiting rows wait until 2099,
 * beyond any horizon, so the service under test leaves them alone.
 */
async function seed(
  pool: pg.Pool,
  schema: string,
  state: string,
  ageMs: number,
  transitions = 3,
): Promise<string> {
  const id = uuid();
  const at = new Date(Date.now() - ageMs).toISOString();
  const finished = ['succeeded', 'dead', 'cancelled'].includes(state);
  await pool.query(
    `insert into "${schema}".jobs
       (id, job_type, state, attempt, max_attempts, scheduled_for, next_at, snapshot,
        machine_version, created_at, updated_at, finished_at)
     values ($1, 'file_cleanup', $2, 1, 3, $3, $4, '{}', 1, $3, $3, $5)`,
    [id, state, at, finished ? null : '2099-01-01T00:00:00Z', finished ? at : null],
  );
  for (let i = 0; i < transitions; i += 1) {
    await pool.query(
      `insert into "${schema}".job_transitions (job_id, from_state, to_state, event, attempt, at)
       values ($1, 'pending', $2, 'due', 1, $3)`,
      [id, state, at],
    );
  }
  return id;
}

async function remaining(pool: pg.Pool, schema: string, ids: string[]) {
  const { rows } = await pool.query<{ jobs: number; transitions: number }>(
    `select (select count(*) from "${schema}".jobs where id = any($1))::int as jobs,
            (select count(*) from "${schema}".job_transitions where job_id = any($1))::int
              as transitions`,
    [ids],
  );
  return rows[0];
}

describe('history retention deletes old finished jobs with their transitions', () => {
  const env = isolatedEnv({ RETENTION_INTERVAL_MINUTES: '1440' });
  const schema = env['SCHEDULER_POSTGRES_SCHEMA'] ?? '';
  let sut: ServiceUnderTest;

  before(async () => {
    sut = await startTestService(env);
  });
  after(async () => {
    await stopAllServices();
    await cleanUp(env);
  });

  it('one run deletes old finished jobs in batches; newer and waiting ones stay', async () => {
    const old: string[] = [];
    for (const state of ['succeeded', 'dead', 'cancelled']) {
      for (let i = 0; i < 6; i += 1) old.push(await seed(sut.pool, schema, state, 3 * DAY));
    }
    const kept: string[] = [];
    for (const state of ['succeeded', 'dead', 'cancelled']) {
      kept.push(await seed(sut.pool, schema, state, DAY / 2));
    }
    for (const state of ['pending', 'retrying', 'awaiting-ack']) {
      kept.push(await seed(sut.pool, schema, state, 3 * DAY));
    }

    const retention = new HistoryRetention({
      pool: sut.pool,
      schema,
      logger: sut.logs.logger,
      maxAgeMs: DAY,
      intervalMs: DAY,
      batchSize: 5,
      pauseMs: 1,
    });
    const deleted = await retention.runOnce();
    await retention.stop();

    assert.deepEqual(deleted, { jobs: 18, transitions: 54 });
    assert.deepEqual(await remaining(sut.pool, schema, old), { jobs: 0, transitions: 0 });
    assert.deepEqual(await remaining(sut.pool, schema, kept), { jobs: 6, transitions: 18 });
    const line = sut.logs.find('history clean-up deleted finished jobs').at(-1);
    assert.equal(line?.['jobs'], 18);
    assert.equal(line?.['transitions'], 54);
    // 18 rows at 5 a statement: three full batches and a fourth with the rest.
    assert.equal(line?.['batches'], 4);
  });

  it('runs asked for at the same time share one run', async () => {
    await seed(sut.pool, schema, 'succeeded', 3 * DAY);
    const retention = new HistoryRetention({
      pool: sut.pool,
      schema,
      logger: sut.logs.logger,
      maxAgeMs: DAY,
      intervalMs: DAY,
      batchSize: 100,
    });
    const [a, b] = await Promise.all([retention.runOnce(), retention.runOnce()]);
    await retention.stop();
    assert.equal(a, b);
    assert.equal(a.jobs, 1);
  });

  it('stop() during a run ends it after the statement in flight; the rest waits', async () => {
    const ids: string[] = [];
    for (let i = 0; i < 6; i += 1) ids.push(await seed(sut.pool, schema, 'dead', 3 * DAY, 1));
    const retention = new HistoryRetention({
      pool: sut.pool,
      schema,
      logger: sut.logs.logger,
      maxAgeMs: DAY,
      intervalMs: DAY,
      batchSize: 2,
      pauseMs: 60_000,
    });
    const run = retention.runOnce();
    await eventually(async () => (await remaining(sut.pool, schema, ids))?.jobs === 4, 5000);
    await retention.stop();
    assert.deepEqual(await run, { jobs: 2, transitions: 2 });
    assert.equal((await remaining(sut.pool, schema, ids))?.jobs, 4);
  });
});

describe('the service runs the history clean-up on its own', () => {
  const env = isolatedEnv({
    HISTORY_RETENTION_DAYS: '1',
    RETENTION_INTERVAL_MINUTES: '0.01',
    RETENTION_BATCH_SIZE: '3',
  });
  const schema = env['SCHEDULER_POSTGRES_SCHEMA'] ?? '';
  let sut: ServiceUnderTest;

  before(async () => {
    sut = await startTestService(env);
  });
  after(async () => {
    await stopAllServices();
    await cleanUp(env);
  });

  it('old finished jobs seeded after start-up go within seconds; new ones stay', async () => {
    const old: string[] = [];
    for (let i = 0; i < 7; i += 1) old.push(await seed(sut.pool, schema, 'succeeded', 2 * DAY));
    const fresh = await seed(sut.pool, schema, 'succeeded', 60_000);

    await eventually(
      async () => (await remaining(sut.pool, schema, old))?.jobs === 0,
      10_000,
      'the old jobs to be deleted',
    );
    assert.deepEqual(await remaining(sut.pool, schema, [fresh]), { jobs: 1, transitions: 3 });
    const metrics = await (await fetch(`${sut.baseUrl}/metrics`)).text();
    assert.match(metrics, /^scheduler_retention_deleted_jobs_total 7$/m);
    assert.match(metrics, /^scheduler_retention_deleted_transitions_total 21$/m);
  });
});

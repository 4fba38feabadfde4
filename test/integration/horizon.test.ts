import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import pino from 'pino';
import { loadConfig } from '../../config/env.js';
import { openDatabase } from '../../src/store/database.js';
import { FakeBackend } from '../support/backend.js';
import {
  cleanUp,
  eventually,
  isolatedEnv,
  startTestService,
  stopAllServices,
  testPool,
} from '../support/harness.js';
import { seedJobs } from '../support/seed.js';

describe('restore and the horizon with more jobs than one page', () => {
  const env = isolatedEnv({ PUBLISH_RETRY_DELAY_SECONDS: '0.2' });
  const schema = env['SCHEDULER_POSTGRES_SCHEMA'] ?? '';
  const pool = testPool();
  after(async () => {
    await stopAllServices();
    await pool.end();
    await cleanUp(env);
  });

  it('1,001 unconfirmed attempts, 1,001 jobs due at one instant and a few later all run, once each', async () => {
    const database = await openDatabase(loadConfig(env).postgres, pino({ level: 'silent' }));
    await database.close();
    const now = Date.now();
    // Regression: a first page of dispatched rows (no wake-up instant) once
    // ended the load, and a page of one instant once repeated forever.
    await seedJobs(pool, schema, { count: 1001, state: 'dispatched', dueAt: now - 60_000 });
    await seedJobs(pool, schema, { count: 1001, state: 'pending', dueAt: now + 2000 });
    await seedJobs(pool, schema, { count: 5, state: 'pending', dueAt: now + 3000, stepMs: 100 });

    const sut = await startTestService(env);
    const backend = await FakeBackend.start(env);
    try {
      const restored = sut.logs.find('restored waiting jobs')[0]?.['restored'];
      assert.equal(restored, 2007);
      const count = async (where: string) =>
        Number(
          (await pool.query(`select count(*)::int as n from "${schema}".jobs where ${where}`))
            .rows[0].n,
        );
      await eventually(async () => (await count(`state = 'succeeded'`)) === 2007, 30_000, 'all');
      const perJob = new Map<string, number>();
      for (const e of backend.received)
        perJob.set(e.body.job_id, (perJob.get(e.body.job_id) ?? 0) + 1);
      assert.equal(perJob.size, 2007, 'every job reached the backend');
      assert.deepEqual(new Set(perJob.values()), new Set([1]), 'each exactly once');
    } finally {
      await backend.close();
    }
  });
});

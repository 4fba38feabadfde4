import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import pino from 'pino';
import { loadConfig } from '../../config/env.js';
import { openDatabase, type Database } from '../../src/store/database.js';
import {
  GroupCommit,
  VersionConflictError,
  type VersionRef,
} from '../../src/store/group-commit.js';
import { commitChanges, insertJob, type JobColumns } from '../../src/store/sql.js';
import { cleanUp, isolatedEnv } from '../support/harness.js';

function columns(state: string, attempt: number): JobColumns {
  return {
    state,
    attempt,
    maxAttempts: 3,
    scheduledFor: Date.now(),
    nextAt: null,
    expiresAt: null,
    metadata: {},
    result: null,
    lastError: null,
    snapshot: { value: state },
    outbox: null,
    finishedAt: null,
  };
}

describe('group commit', () => {
  const env = isolatedEnv();
  let db: Database;

  before(async () => {
    db = await openDatabase(loadConfig(env).postgres, pino({ level: 'silent' }));
  });
  after(async () => {
    await db?.close();
    await cleanUp(env);
  });

  async function newJob(): Promise<string> {
    const id = randomUUID();
    await insertJob(db.pool, db.schema, {
      id,
      jobType: 'file_cleanup',
      idempotencyKey: null,
      subject: null,
      columns: columns('pending', 0),
      event: 'test',
      at: Date.now(),
    });
    return id;
  }

  it('writes the changes of many jobs in one statement, with their transitions', async () => {
    const batches: number[] = [];
    const writer = new GroupCommit({
      windowMs: 20,
      write: (changes) => commitChanges(db.pool, db.schema, changes),
      logger: pino({ level: 'silent' }),
      onBatch: (size) => batches.push(size),
    });
    const ids = await Promise.all(Array.from({ length: 50 }, () => newJob()));
    await Promise.all(
      ids.map((id) =>
        writer.write(id, { version: 1 }, columns('dispatched', 1), [
          {
            from: 'pending',
            to: 'dispatched',
            event: 'due',
            attempt: 1,
            at: Date.now(),
            detail: null,
          },
        ]),
      ),
    );
    assert.deepEqual(batches, [50]);
    const { rows } = await db.pool.query(
      `select count(*)::int as n, min(version) as lo, max(version) as hi from "${db.schema}".jobs
       where id = any($1::uuid[]) and state = 'dispatched'`,
      [ids],
    );
    assert.deepEqual(rows[0], { n: 50, lo: 2, hi: 2 });
    const logged = await db.pool.query(
      `select count(*)::int as n from "${db.schema}".job_transitions where job_id = any($1::uuid[])`,
      [ids],
    );
    assert.equal(logged.rows[0].n, 100, 'one creation and one change per job');
  });

  it('merges several changes of one job in a window: the last row wins, every transition stays', async () => {
    const writer = new GroupCommit({
      windowMs: 20,
      write: (changes) => commitChanges(db.pool, db.schema, changes),
      logger: pino({ level: 'silent' }),
    });
    const id = await newJob();
    const ref: VersionRef = { version: 1 };
    const at = Date.now();
    await Promise.all([
      writer.write(id, ref, columns('dispatched', 1), [
        { from: 'pending', to: 'dispatched', event: 'due', attempt: 1, at, detail: null },
      ]),
      writer.write(id, ref, columns('awaiting-ack', 1), [
        {
          from: 'dispatched',
          to: 'awaiting-ack',
          event: 'publish.confirmed',
          attempt: 1,
          at,
          detail: null,
        },
      ]),
    ]);
    assert.equal(ref.version, 2);
    const { rows } = await db.pool.query(
      `select to_state from "${db.schema}".job_transitions where job_id = $1 order by id`,
      [id],
    );
    assert.deepEqual(
      rows.map((r) => r.to_state),
      ['pending', 'dispatched', 'awaiting-ack'],
    );
  });

  it('refuses a change made against a version that moved, and writes the others', async () => {
    const writer = new GroupCommit({
      windowMs: 5,
      write: (changes) => commitChanges(db.pool, db.schema, changes),
      logger: pino({ level: 'silent' }),
    });
    const [stale, fresh] = [await newJob(), await newJob()];
    await db.pool.query(`update "${db.schema}".jobs set version = version + 1 where id = $1`, [
      stale,
    ]);
    const results = await Promise.allSettled([
      writer.write(stale, { version: 1 }, columns('cancelled', 0), []),
      writer.write(fresh, { version: 1 }, columns('cancelled', 0), []),
    ]);
    assert.equal(results[0].status, 'rejected');
    assert.ok((results[0] as PromiseRejectedResult).reason instanceof VersionConflictError);
    assert.equal(results[1].status, 'fulfilled');
    const { rows } = await db.pool.query(
      `select id, state from "${db.schema}".jobs where id = any($1::uuid[])`,
      [[stale, fresh]],
    );
    const state = new Map(rows.map((r) => [r.id, r.state]));
    assert.equal(state.get(stale), 'pending');
    assert.equal(state.get(fresh), 'cancelled');
  });

  it('keeps a change through a failed statement and commits it on the retry', async () => {
    let failures = 1;
    const writer = new GroupCommit({
      windowMs: 1,
      write: (changes) => {
        if (failures-- > 0) return Promise.reject(new Error('connection reset'));
        return commitChanges(db.pool, db.schema, changes);
      },
      logger: pino({ level: 'silent' }),
    });
    const id = await newJob();
    const ref = { version: 1 };
    await writer.write(id, ref, columns('cancelled', 0), []);
    assert.equal(ref.version, 2);
  });

  it('a row the database refuses fails only its own write; the rest of its batch commits', async () => {
    const writer = new GroupCommit({
      windowMs: 20,
      write: (changes) => commitChanges(db.pool, db.schema, changes),
      logger: pino({ level: 'silent' }),
    });
    const [bad, good] = [await newJob(), await newJob()];
    const broken = { ...columns('retrying', 1), lastError: 'nul \u0000 byte' };
    const results = await Promise.allSettled([
      writer.write(bad, { version: 1 }, broken, []),
      writer.write(good, { version: 1 }, columns('retrying', 1), []),
    ]);
    assert.equal(results[0].status, 'rejected');
    assert.equal(results[1].status, 'fulfilled');
    const later = await newJob();
    await writer.write(later, { version: 1 }, columns('cancelled', 0), []);
  });

  it('a second owner writing the same job in the same window is refused', async () => {
    const writer = new GroupCommit({
      windowMs: 20,
      write: (changes) => commitChanges(db.pool, db.schema, changes),
      logger: pino({ level: 'silent' }),
    });
    const id = await newJob();
    const results = await Promise.allSettled([
      writer.write(id, { version: 1 }, columns('pending', 0), []),
      writer.write(id, { version: 1 }, columns('cancelled', 0), []),
    ]);
    assert.equal(results[0].status, 'fulfilled');
    assert.ok((results[1] as PromiseRejectedResult).reason instanceof VersionConflictError);
  });
});

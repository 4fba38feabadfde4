import { MikroORM, type PostgreSqlConnection } from '@mikro-orm/postgresql';
import { Migrator } from '@mikro-orm/migrations';
import type pg from 'pg';
import type { Logger } from 'pino';
import type { Config } from '../../config/env.js';
import { JobEntity, JobTransitionEntity } from './entities.js';
import { Migration0001Jobs } from './migrations/0001-jobs.js';
import { Migration0003FinishedIndex } from './migrations/0003-finished-index.js';
import { Migration0002Schedules } from './migrations/0002-schedules.js';

/** Append-only: a released migration is never edited, the next change is a new entry. */
export const MIGRATIONS = [
  { name: '0001-jobs', class: Migration0001Jobs },
  { name: '0002-schedules', class: Migration0002Schedules },
  { name: '0003-finished-index', class: Migration0003FinishedIndex },
];

export interface Database {
  orm: MikroORM;
  /** The pool under MikroORM, for the statements in `sql.ts` (bound `$n` parameters). */
  pool: pg.Pool;
  schema: string;
  /** True when a trivial query answers. */
  ping(): Promise<boolean>;
  close(): Promise<void>;
}

/** The store could not be opened; the message says what to check. */
export class DatabaseError extends Error {
  override readonly name = 'DatabaseError';
}

export function ormOptions(config: Config['postgres']) {
  return {
    dbName: config.database,
    host: config.host,
    port: config.port,
    user: config.user,
    password: config.password === '' ? undefined : config.password,
    schema: config.schema,
    entities: [JobEntity, JobTransitionEntity],
    extensions: [Migrator],
    migrations: {
      migrationsList: MIGRATIONS,
      tableName: 'mikro_orm_migrations',
      transactional: true,
      allOrNothing: true,
      snapshot: false,
      silent: true,
    },
    pool: { min: 0, max: config.poolSize, idleTimeoutMillis: 30_000 },
    // The database is created below, where a race between replicas is handled.
    ensureDatabase: false,
    debug: false,
    driverOptions: {
      ssl: config.ssl ? { rejectUnauthorized: true } : undefined,
      connectionTimeoutMillis: 5000,
      // A cached generic plan for `unnest` updates switched to a per-id scan
      // once a large backlog changed the statistics (9 ms became 4.8 s).
      options: '-c plan_cache_mode=force_generic_plan',
    },
  };
}

async function ensureDatabase(orm: MikroORM, logger: Logger): Promise<void> {
  try {
    if (await orm.schema.ensureDatabase()) logger.info('created the database');
  } catch (err) {
    // Two replicas creating it at once: the loser sees a duplicate; the database exists.
    const code = (err as { code?: string }).code;
    if (code !== '42P04' && code !== '23505') throw err;
  }
}

/** Runs pending migrations under a transaction-scoped advisory lock, so replicas do not race. */
export async function migrate(orm: MikroORM, schema: string): Promise<string[]> {
  const connection = orm.em.getConnection();
  return connection.transactional(async (trx) => {
    await connection.execute(
      'select pg_advisory_xact_lock(hashtext(?))',
      [`quantutor-scheduler:migrate:${schema}`],
      'all',
      trx,
    );
    const ran = await orm.migrator.up({ transaction: trx });
    return ran.map((m) => m.name);
  });
}

/** Connects (creating the database when missing), migrates, and returns the store. */
export async function openDatabase(config: Config['postgres'], logger: Logger): Promise<Database> {
  const where = `${config.user}@${config.host}:${config.port}/${config.database}`;
  let orm: MikroORM | undefined;
  try {
    orm = await MikroORM.init(ormOptions(config));
    await ensureDatabase(orm, logger);
    const ran = await migrate(orm, config.schema);
    if (ran.length > 0) logger.info({ migrations: ran }, 'migrated the database');
  } catch (err) {
    await orm?.close(true);
    throw new DatabaseError(
      `cannot open PostgreSQL at ${where}: ${(err as Error).message}; ` +
        'check that it runs and the SCHEDULER_POSTGRES_* settings',
      { cause: err },
    );
  }

  const connection = orm.em.getConnection() as PostgreSqlConnection;
  const pool = await connection.getNativeClient();
  const opened = orm;
  return {
    orm: opened,
    pool,
    schema: config.schema,
    async ping() {
      try {
        await pool.query('select 1');
        return true;
      } catch {
        return false;
      }
    },
    async close() {
      await opened.close(true);
    },
  };
}

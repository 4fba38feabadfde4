import pino from 'pino';
import { loadConfig } from '../config/env.js';
import { openDatabase } from '../src/store/database.js';

/** Creates the database when missing and applies pending migrations, then exits. */
const config = loadConfig();
const logger = pino({ base: { service: 'job_scheduler' } });
const database = await openDatabase(config.postgres, logger);
const executed = await database.orm.migrator.getExecuted();
logger.info(
  { schema: config.postgres.schema, migrations: executed.map((m) => m.name) },
  'migrated',
);
await database.close();

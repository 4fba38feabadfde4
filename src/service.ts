import type http from 'node:http';
import type { Logger } from 'pino';
import type { Config } from '../config/env.js';
import { PUBLICATIONS, SUBSCRIPTIONS } from '../config/topology.js';
import { Broker } from './broker/broker.js';
import { createCommandHandler } from './handlers/commands.js';
import { createReplyHandler } from './handlers/replies.js';
import { createJobsRouter } from './http/jobs-routes.js';
import { createInspector } from './http/debug-routes.js';
import { SchedulerMetrics } from './http/metrics.js';
import { closeServer, createApp, listen, type Readiness, type Services } from './http/app.js';
import { SchedulerEventBus } from './events.js';
import { JobRuntime } from './runtime/job-runtime.js';
import { JobService } from './runtime/job-service.js';
import { createSchedulesRouter } from './http/schedules-routes.js';
import { ScheduleService } from './scheduler/schedule-service.js';
import { openDatabase, type Database } from './store/database.js';
import { GroupCommit } from './store/group-commit.js';
import { commitChanges, findByIdOrKey } from './store/sql.js';
import { cachedJobCounts, countJobs } from './store/inspector-sql.js';
import { HistoryRetention } from './store/retention.js';

export interface RunningService {
  /** What the service reports as it works; filled in as start-up goes. */
  services: Services;
  /** The HTTP server, listening from the first moment of start-up. */
  server: http.Server;
  readiness: Readiness;
  /** Resolves when start-up is complete (ready), rejects if it failed. */
  started: Promise<void>;
  /** Stops in order and resolves when everything is closed. */
  stop(): Promise<void>;
}

const CONNECT_RETRY_MAX_MS = 10_000;
/** Counting every row of `jobs` at most this often serves the inspector page and scrapes. */
const STORED_COUNTS_TTL_MS = 15_000;

/**
 * Starts the service in the order of DESIGN.md: HTTP (live, not ready), the
 * database (created and migrated), the broker, restore of waiting jobs,
 * subscriptions, periodic schedules; ready only then.
 */
export async function startService(config: Config, logger: Logger): Promise<RunningService> {
  const readiness: Readiness = {
    started: false,
    stopping: false,
    postgres: async () => false,
    rabbitmq: () => false,
  };
  const bus = new SchedulerEventBus();
  const services: Services = { bus };
  let retention: HistoryRetention | undefined;
  const storedCounts = cachedJobCounts(async () => {
    const db = services.database;
    return db ? countJobs(db.pool, db.schema) : [];
  }, STORED_COUNTS_TTL_MS);
  const inspector = createInspector({
    services,
    bus,
    logger,
    maxBufferedEvents: config.inspector.sseMaxBufferedEvents,
    heartbeatMs: config.inspector.sseHeartbeatMs,
    storedCounts,
    serviceWakeUps: () => [{ name: 'history clean-up', at: retention?.nextRunAt ?? null }],
  });
  const metrics = new SchedulerMetrics({
    bus,
    services,
    storedCounts,
    streams: () => inspector.streams.size,
    logger,
  });
  const app = createApp({
    appName: config.appName,
    version: config.version,
    apiToken: config.http.apiToken,
    logger,
    readiness,
    services,
    routers: [
      inspector.router,
      metrics.router,
      createJobsRouter(services, {
        limits: {
          maxDelaySeconds: config.jobs.maxDelaySeconds,
          metadataMaxBytes: config.jobs.metadataMaxBytes,
        },
        maxBytes: config.rabbitmq.maxMessageBytes,
      }),
      createSchedulesRouter(services),
    ],
  });
  const server = await listen(app, config.http.host, config.http.port);
  logger.info({ port: config.http.port, version: config.version }, 'listening');

  let database: Database | undefined;
  let broker: Broker | undefined;
  let writer: GroupCommit | undefined;
  let runtime: JobRuntime | undefined;
  let schedules: ScheduleService | undefined;
  let abort: () => void = () => {};
  const aborted = new Promise<never>((_, reject) => {
    abort = () => reject(new Error('start-up cancelled by shutdown'));
  });
  aborted.catch(() => {});

  /** Retries a connection with backoff until it works or shutdown begins. */
  const connect = async <T>(what: string, attempt: () => Promise<T>): Promise<T> => {
    for (let delay = 500; ; delay = Math.min(delay * 2, CONNECT_RETRY_MAX_MS)) {
      try {
        return await Promise.race([attempt(), aborted]);
      } catch (err) {
        if (readiness.stopping) throw err;
        logger.error({ err, retryInMs: delay }, `cannot reach ${what}; retrying`);
        await Promise.race([new Promise((r) => setTimeout(r, delay)), aborted]);
      }
    }
  };

  const started = (async () => {
    database = await connect('PostgreSQL', () => openDatabase(config.postgres, logger));
    const db = database;
    readiness.postgres = () => db.ping();
    broker = await connect('RabbitMQ', () => Broker.connect(config.rabbitmq, logger, bus));
    const mq = broker;
    readiness.rabbitmq = () => mq.isConnected;

    writer = new GroupCommit({
      windowMs: config.commitWindowMs,
      write: (changes) => commitChanges(db.pool, db.schema, changes),
      logger,
      onBatch: (rows, ms) => bus.emit('committed', { rows, ms }),
    });
    runtime = new JobRuntime({
      pool: db.pool,
      schema: db.schema,
      writer,
      horizonMs: config.horizonMs,
      logger,
      events: bus,
      publish: (routingKey, body, properties) =>
        mq.publish(PUBLICATIONS.execute, body, routingKey, {
          ...properties,
          contentType: 'application/json',
        } as never),
    });
    const jobs = new JobService(runtime, db.orm, db.pool, config, db.schema);
    const restored = await runtime.start();
    logger.info({ restored }, 'restored waiting jobs');

    await mq.consume(
      SUBSCRIPTIONS.results,
      createReplyHandler(runtime, { maxBytes: config.rabbitmq.maxMessageBytes, logger }),
    );
    await mq.consume(
      SUBSCRIPTIONS.commands,
      createCommandHandler(jobs, {
        limits: {
          maxDelaySeconds: config.jobs.maxDelaySeconds,
          metadataMaxBytes: config.jobs.metadataMaxBytes,
        },
        maxBytes: config.rabbitmq.maxMessageBytes,
        logger,
        reply: (replyTo, correlationId, body) =>
          mq.publish(PUBLICATIONS.reply, Buffer.from(JSON.stringify(body)), replyTo, {
            ...(correlationId && { correlationId }),
            contentType: 'application/json',
          } as never),
        findByKey: async (key) =>
          (await findByIdOrKey(db.pool, db.schema, null, key))[0]?.id ?? null,
      }),
    );

    schedules = new ScheduleService({
      definitions: config.schedules.definitions,
      jobs,
      pool: db.pool,
      schema: db.schema,
      logger,
    });
    await schedules.start();
    Object.assign(services, { jobs, runtime, database: db, schedules });
    retention = new HistoryRetention({
      pool: db.pool,
      schema: db.schema,
      logger,
      ...config.retention,
      onDeleted: (deleted) => metrics.retentionDeleted(deleted.jobs, deleted.transitions),
    });
    retention.start();
    readiness.started = true;
    logger.info('ready');
  })();
  started.catch(() => {});

  let stopping: Promise<void> | undefined;
  const stop = () => {
    stopping ??= (async () => {
      readiness.stopping = true;
      abort();
      await started.catch(() => {});
      // Each step runs even if one before it failed: a half-closed broker must
      // not keep the database or the HTTP server open.
      const step = async (name: string, work: () => unknown) => {
        try {
          await work();
        } catch (err) {
          logger.error({ err, step: name }, 'shutdown step failed');
        }
      };
      await step('schedules', () => schedules?.stop());
      await step('retention', () => retention?.stop());
      await step('consumers', () => broker?.stopConsuming());
      await step('actors', () => runtime?.stop());
      // With the database down, what is still queued cannot commit; give up on
      // it in time to close the rest (it is recovered from the last durable
      // state at the next start) rather than overrun the grace period.
      await step('commit', () => commitWithin(writer, config.shutdownGraceMs / 2));
      await step('broker', () => broker?.close());
      await step('database', () => database?.close());
      // Open inspector streams would keep the server from closing.
      await step('inspector streams', () => inspector.streams.close());
      await step('metrics', () => metrics.stop());
      await step('http', () => closeServer(server));
    })();
    return stopping;
  };

  return { server, readiness, started, stop, services };
}

/** Drains the group commit for at most `ms`, then drops what is left. */
async function commitWithin(writer: GroupCommit | undefined, ms: number): Promise<void> {
  if (!writer) return;
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<'late'>((resolve) => {
    timer = setTimeout(() => resolve('late'), ms);
  });
  const outcome = await Promise.race([writer.drain().then(() => 'done' as const), late]);
  clearTimeout(timer);
  if (outcome === 'late') {
    writer.abandon(new Error('shutdown: the database did not take the last changes in time'));
  }
}

import { z } from 'zod';
import { ConfigError } from './errors.js';
import { loadScheduleDefinitions, type ScheduleDefinition } from './schedules.js';

export { ConfigError };

const integer = (min: number, max: number) =>
  z
    .string()
    .trim()
    .regex(/^-?\d+$/, 'expected a whole number')
    .transform(Number)
    .pipe(z.number().int().min(min).max(max));

const decimal = (min: number, max: number) =>
  z
    .string()
    .trim()
    .regex(/^-?\d+(\.\d+)?$/, 'expected a number')
    .transform(Number)
    .pipe(z.number().min(min).max(max));

const flag = z
  .string()
  .trim()
  .toLowerCase()
  .refine((v) => ['true', 'false', '1', '0', 'yes', 'no', 'on', 'off'].includes(v), {
    message: 'expected true or false',
  })
  .transform((v) => ['true', '1', 'yes', 'on'].includes(v));

const identifier = z
  .string()
  .trim()
  .regex(/^[a-z_][a-z0-9_]{0,62}$/, 'expected a lowercase SQL identifier (a-z, 0-9, _)');

const name = z.string().trim().min(1, 'must not be empty').max(255);

const amqpUrl = z
  .string()
  .trim()
  .refine((v) => /^amqps?:\/\/[^/]/.test(v) && URL.canParse(v), {
    message: 'expected an amqp:// or amqps:// URL',
  });

const level = z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']);

const DAY = 86_400;

/**
 * Every setting the service reads, with its default. Names are those of the
 * earlier Python service where it had one; defaults work on a developer
 * machine with PostgreSQL and RabbitMQ on localhost.
 */
const schema = z.object({
  APP_NAME: name.default('QuanTutor Scheduler'),
  VERSION: name.optional(),
  /** 0 picks a free port. */
  PORT: integer(0, 65_535).default(8001),
  /** Bind address of the HTTP server. */
  HOST: name.default('0.0.0.0'),
  SCHEDULER_API_TOKEN: z.string().min(16, 'must be at least 16 characters').optional(),

  SCHEDULER_POSTGRES_HOST: name.default('127.0.0.1'),
  SCHEDULER_POSTGRES_PORT: integer(1, 65_535).default(5432),
  SCHEDULER_POSTGRES_DB: identifier.default('quantutor_scheduler'),
  SCHEDULER_POSTGRES_USER: name.default('postgres'),
  SCHEDULER_POSTGRES_PASSWORD: z.string().default(''),
  SCHEDULER_POSTGRES_SCHEMA: identifier.default('scheduler'),
  SCHEDULER_POSTGRES_SSL: flag.default(false),
  /** Connections in the pool. */
  SCHEDULER_POSTGRES_POOL_SIZE: integer(2, 100).default(10),

  RABBITMQ_URL: amqpUrl.default('amqp://guest:guest@127.0.0.1:5672/'),
  RABBITMQ_EXCHANGE: name.default('quantutor.jobs'),
  RABBITMQ_QUEUE_NAME: name.default('scheduler.results'),
  RABBITMQ_COMMANDS_QUEUE: name.default('scheduler.commands'),
  RABBITMQ_DEAD_LETTER_EXCHANGE: name.optional(),
  RABBITMQ_DEAD_LETTER_QUEUE: name.default('scheduler.dead-letter'),
  /** Unacknowledged messages per consumer. */
  RABBITMQ_PREFETCH: integer(1, 10_000).default(1000),
  /** Confirm channels kept for publishing; each holds one unconfirmed publish. */
  RABBITMQ_PUBLISH_CHANNELS: integer(1, 1000).default(100),
  /** Broker-side backstop: deliveries of one message before the broker dead-letters it. */
  RABBITMQ_DELIVERY_LIMIT: integer(1, 1000).default(20),
  /** Times the service handles one message before it dead-letters it itself. */
  MESSAGE_MAX_TRIES: integer(1, 100).default(5),
  /** Largest message body accepted, in bytes. */
  MESSAGE_MAX_BYTES: integer(1024, 64 * 1024 * 1024).default(1024 * 1024),
  /** How long a publish may wait for the broker's confirm, in seconds. */
  PUBLISH_TIMEOUT_SECONDS: decimal(0.1, 600).default(10),
  /** First wait before publishing an attempt again after a failed publish, in seconds. */
  PUBLISH_RETRY_DELAY_SECONDS: decimal(0.01, 3600).default(1),

  LOG_LEVEL: z.string().trim().toLowerCase().pipe(level).default('info'),
  LOG_DIR: z.string().trim().optional(),
  LOG_JSON: flag.default(true),
  LOG_CONSOLE: flag.default(true),
  LOG_MAX_FILE_SIZE_MB: integer(1, 10_000).default(10),
  LOG_BACKUP_COUNT: integer(0, 1000).default(5),
  /** Human-readable console lines instead of JSON; default on when NODE_ENV=development. */
  LOG_PRETTY: flag.optional(),
  NODE_ENV: z.string().optional(),

  DEFAULT_JOB_TIMEOUT_SECONDS: integer(1, 7 * DAY).default(300),
  DEFAULT_JOB_MAX_RETRIES: integer(1, 1000).default(3),
  DEFAULT_JOB_MIN_RETRY_DELAY_SECONDS: decimal(0, DAY).default(60),
  CLEANUP_JOB_TIMEOUT_SECONDS: integer(1, 7 * DAY).optional(),
  CLEANUP_JOB_MAX_RETRIES: integer(1, 1000).optional(),
  CLEANUP_JOB_MIN_RETRY_DELAY_SECONDS: decimal(0, DAY).optional(),
  REMINDER_JOB_TIMEOUT_SECONDS: integer(1, 7 * DAY).optional(),
  REMINDER_JOB_MAX_RETRIES: integer(1, 1000).optional(),
  REMINDER_JOB_MIN_RETRY_DELAY_SECONDS: decimal(0, DAY).optional(),
  /** Default cutoff of a job, in seconds after it is due; unset means none. */
  DEFAULT_JOB_EXPIRES_AFTER_SECONDS: integer(1, 3650 * DAY).optional(),
  CLEANUP_JOB_EXPIRES_AFTER_SECONDS: integer(1, 3650 * DAY).optional(),
  REMINDER_JOB_EXPIRES_AFTER_SECONDS: integer(1, 3650 * DAY).optional(),
  /** Cap of the doubling retry backoff, in seconds. */
  RETRY_MAX_DELAY_SECONDS: decimal(0.01, 7 * DAY).default(3600),

  MFA_EXPIRY_JOB_INTERVAL_MINUTES: decimal(0.01, 7 * 24 * 60).default(60),
  MISFIRE_GRACE_SECONDS: integer(0, 7 * DAY).optional(),
  APSCHEDULER_MISFIRE_GRACE_SECONDS: integer(0, 7 * DAY).optional(),

  /** Jobs due within this many minutes live as actors; the rest wait in the database. */
  HORIZON_MINUTES: decimal(0.1, 7 * 24 * 60).default(60),
  /** Longest `delay_seconds` a command may ask for (default ten years). */
  MAX_DELAY_SECONDS: integer(1, 100 * 365 * DAY).default(10 * 365 * DAY),
  /** Largest `metadata` object, in bytes of JSON. */
  METADATA_MAX_BYTES: integer(2, 16 * 1024 * 1024).default(64 * 1024),
  /** Window in which state changes of many jobs are committed together, in ms. */
  COMMIT_WINDOW_MS: integer(0, 1000).default(5),
  /** Finished jobs and their transitions older than this many days are deleted. */
  HISTORY_RETENTION_DAYS: decimal(0.001, 36_500).default(30),
  /** How often the history clean-up runs, in minutes. */
  RETENTION_INTERVAL_MINUTES: decimal(0.01, 7 * 24 * 60).default(60),
  /** Rows deleted per statement by the history clean-up. */
  RETENTION_BATCH_SIZE: integer(1, 100_000).default(1000),
  /** Events one inspector stream may have queued before it is disconnected. */
  SSE_MAX_BUFFERED_EVENTS: integer(1, 1_000_000).default(1000),
  /** Comment line sent on an idle inspector stream, in seconds. */
  SSE_HEARTBEAT_SECONDS: decimal(1, 3600).default(15),
  /** Longest time a SIGTERM shutdown may take before the process exits anyway, in seconds. */
  SHUTDOWN_GRACE_SECONDS: decimal(1, 600).default(20),
});

type Env = z.infer<typeof schema>;

export interface JobCategoryDefaults {
  timeoutSeconds: number;
  maxAttempts: number;
  minRetryDelaySeconds: number;
  /** Cutoff after the due instant, in seconds; undefined for none. */
  expiresAfterSeconds: number | undefined;
}

export interface Config {
  appName: string;
  version: string;
  http: { host: string; port: number; apiToken: string | undefined };
  postgres: {
    host: string;
    port: number;
    database: string;
    user: string;
    password: string;
    schema: string;
    ssl: boolean;
    poolSize: number;
  };
  rabbitmq: {
    url: string;
    exchange: string;
    resultsQueue: string;
    commandsQueue: string;
    deadLetterExchange: string;
    deadLetterQueue: string;
    prefetch: number;
    publishChannels: number;
    deliveryLimit: number;
    maxTries: number;
    maxMessageBytes: number;
    publishTimeoutMs: number;
  };
  log: {
    level: Env['LOG_LEVEL'];
    dir: string | undefined;
    json: boolean;
    console: boolean;
    maxFileSizeMb: number;
    backupCount: number;
    pretty: boolean;
  };
  jobs: {
    cleanup: JobCategoryDefaults;
    reminder: JobCategoryDefaults;
    maxRetryDelayMs: number;
    publishRetryDelayMs: number;
    maxDelaySeconds: number;
    metadataMaxBytes: number;
  };
  schedules: {
    mfaExpiryIntervalMinutes: number;
    misfireGraceSeconds: number;
    /** Periodic schedules, checked at start like every other setting (config/schedules.ts). */
    definitions: ScheduleDefinition[];
  };
  horizonMs: number;
  commitWindowMs: number;
  retention: { maxAgeMs: number; intervalMs: number; batchSize: number };
  inspector: { sseMaxBufferedEvents: number; sseHeartbeatMs: number };
  shutdownGraceMs: number;
}

function describeIssues(error: z.ZodError, env: NodeJS.ProcessEnv): string {
  return error.issues
    .map((issue) => {
      const variable = String(issue.path[0]);
      const secret = /PASSWORD|TOKEN|URL/.test(variable);
      const shown = secret ? '' : ` (got ${JSON.stringify(env[variable])})`;
      return `${variable}: ${issue.message}${shown}`;
    })
    .join('; ');
}

/** Reads and checks the environment. Throws `ConfigError` naming every bad variable. */
export function loadConfig(env: NodeJS.ProcessEnv = process.env, packageVersion = '0.0.0'): Config {
  const present = Object.fromEntries(
    Object.entries(env).filter(([, value]) => value !== undefined && value !== ''),
  );
  const parsed = schema.safeParse(present);
  if (!parsed.success) {
    throw new ConfigError(`Invalid environment: ${describeIssues(parsed.error, env)}`);
  }
  const e = parsed.data;
  const category = (prefix: 'CLEANUP' | 'REMINDER'): JobCategoryDefaults => ({
    timeoutSeconds: e[`${prefix}_JOB_TIMEOUT_SECONDS`] ?? e.DEFAULT_JOB_TIMEOUT_SECONDS,
    maxAttempts: e[`${prefix}_JOB_MAX_RETRIES`] ?? e.DEFAULT_JOB_MAX_RETRIES,
    minRetryDelaySeconds:
      e[`${prefix}_JOB_MIN_RETRY_DELAY_SECONDS`] ?? e.DEFAULT_JOB_MIN_RETRY_DELAY_SECONDS,
    expiresAfterSeconds:
      e[`${prefix}_JOB_EXPIRES_AFTER_SECONDS`] ?? e.DEFAULT_JOB_EXPIRES_AFTER_SECONDS,
  });

  const misfireGraceSeconds = e.MISFIRE_GRACE_SECONDS ?? e.APSCHEDULER_MISFIRE_GRACE_SECONDS ?? 300;
  return {
    appName: e.APP_NAME,
    version: e.VERSION ?? packageVersion,
    http: { host: e.HOST, port: e.PORT, apiToken: e.SCHEDULER_API_TOKEN },
    postgres: {
      host: e.SCHEDULER_POSTGRES_HOST,
      port: e.SCHEDULER_POSTGRES_PORT,
      database: e.SCHEDULER_POSTGRES_DB,
      user: e.SCHEDULER_POSTGRES_USER,
      password: e.SCHEDULER_POSTGRES_PASSWORD,
      schema: e.SCHEDULER_POSTGRES_SCHEMA,
      ssl: e.SCHEDULER_POSTGRES_SSL,
      poolSize: e.SCHEDULER_POSTGRES_POOL_SIZE,
    },
    rabbitmq: {
      url: e.RABBITMQ_URL,
      exchange: e.RABBITMQ_EXCHANGE,
      resultsQueue: e.RABBITMQ_QUEUE_NAME,
      commandsQueue: e.RABBITMQ_COMMANDS_QUEUE,
      deadLetterExchange: e.RABBITMQ_DEAD_LETTER_EXCHANGE ?? `${e.RABBITMQ_EXCHANGE}.dead-letter`,
      deadLetterQueue: e.RABBITMQ_DEAD_LETTER_QUEUE,
      prefetch: e.RABBITMQ_PREFETCH,
      publishChannels: e.RABBITMQ_PUBLISH_CHANNELS,
      deliveryLimit: e.RABBITMQ_DELIVERY_LIMIT,
      maxTries: e.MESSAGE_MAX_TRIES,
      maxMessageBytes: e.MESSAGE_MAX_BYTES,
      publishTimeoutMs: Math.round(e.PUBLISH_TIMEOUT_SECONDS * 1000),
    },
    log: {
      level: e.LOG_LEVEL,
      dir: e.LOG_DIR || undefined,
      json: e.LOG_JSON,
      console: e.LOG_CONSOLE,
      maxFileSizeMb: e.LOG_MAX_FILE_SIZE_MB,
      backupCount: e.LOG_BACKUP_COUNT,
      pretty: e.LOG_PRETTY ?? e.NODE_ENV === 'development',
    },
    jobs: {
      cleanup: category('CLEANUP'),
      reminder: category('REMINDER'),
      maxRetryDelayMs: Math.round(e.RETRY_MAX_DELAY_SECONDS * 1000),
      publishRetryDelayMs: Math.round(e.PUBLISH_RETRY_DELAY_SECONDS * 1000),
      maxDelaySeconds: e.MAX_DELAY_SECONDS,
      metadataMaxBytes: e.METADATA_MAX_BYTES,
    },
    schedules: {
      mfaExpiryIntervalMinutes: e.MFA_EXPIRY_JOB_INTERVAL_MINUTES,
      misfireGraceSeconds,
      definitions: loadScheduleDefinitions(present, {
        mfaExpiryIntervalMinutes: e.MFA_EXPIRY_JOB_INTERVAL_MINUTES,
        misfireGraceSeconds,
      }),
    },
    horizonMs: Math.round(e.HORIZON_MINUTES * 60_000),
    commitWindowMs: e.COMMIT_WINDOW_MS,
    retention: {
      maxAgeMs: Math.round(e.HISTORY_RETENTION_DAYS * 86_400_000),
      intervalMs: Math.round(e.RETENTION_INTERVAL_MINUTES * 60_000),
      batchSize: e.RETENTION_BATCH_SIZE,
    },
    inspector: {
      sseMaxBufferedEvents: e.SSE_MAX_BUFFERED_EVENTS,
      sseHeartbeatMs: Math.round(e.SSE_HEARTBEAT_SECONDS * 1000),
    },
    shutdownGraceMs: Math.round(e.SHUTDOWN_GRACE_SECONDS * 1000),
  };
}

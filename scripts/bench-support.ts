import { randomBytes } from 'node:crypto';
import amqp from 'amqplib';
import type pg from 'pg';
import type { Config } from '../config/env.js';

/** Settings for a benchmark run of its own: a schema and broker names nobody else uses. */
export function benchEnv(prefix: string) {
  const id = randomBytes(4).toString('hex');
  return {
    HOST: '127.0.0.1',
    PORT: String(20_000 + Math.floor(Math.random() * 20_000)),
    SCHEDULER_POSTGRES_DB: process.env['BENCH_POSTGRES_DB'] ?? 'quantutor_scheduler_bench',
    SCHEDULER_POSTGRES_SCHEMA: `${prefix}_${id}`,
    RABBITMQ_EXCHANGE: `${prefix}.${id}.jobs`,
    RABBITMQ_QUEUE_NAME: `${prefix}.${id}.results`,
    RABBITMQ_COMMANDS_QUEUE: `${prefix}.${id}.commands`,
    RABBITMQ_DEAD_LETTER_QUEUE: `${prefix}.${id}.dead-letter`,
    MFA_EXPIRY_JOB_INTERVAL_MINUTES: '10080',
    FILE_CLEANUP_JOB_ENABLED: 'false',
    REGISTRATION_EXPIRY_JOB_ENABLED: 'false',
    RELATIONSHIP_CONSISTENCY_JOB_ENABLED: 'false',
    LOG_LEVEL: 'warn',
  };
}

/** Drops what a run made: its schema, queues and exchanges. */
export async function dropBenchState(config: Config, pool: pg.Pool): Promise<void> {
  await pool.query(`drop schema "${config.postgres.schema}" cascade`);
  const connection = await amqp.connect(config.rabbitmq.url);
  const channel = await connection.createChannel();
  const { resultsQueue, commandsQueue, deadLetterQueue } = config.rabbitmq;
  for (const queue of [resultsQueue, commandsQueue, deadLetterQueue]) {
    await channel.deleteQueue(queue);
  }
  await channel.deleteExchange(config.rabbitmq.exchange);
  await channel.deleteExchange(config.rabbitmq.deadLetterExchange);
  await connection.close();
}

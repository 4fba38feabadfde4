import { randomUUID } from 'node:crypto';
import amqp from 'amqplib';
import { eventually, RABBITMQ_URL } from './harness.js';

export interface Execute {
  body: Record<string, any>;
  properties: amqp.MessageProperties;
  routingKey: string;
  receivedAt: number;
}

/** What the fake backend does with an execute message. */
export type Action =
  | { kind: 'complete'; result?: Record<string, unknown> | null; attempt?: boolean }
  | { kind: 'fail'; error?: string; shouldRetry?: boolean; attempt?: boolean }
  | { kind: 'silent' };

/**
 * Plays the QuanTutor backend over RabbitMQ: consumes `jobs.execute.#` (or the
 * keys given), replies as `behaviour` says, and answers commands' replies.
 */
export class FakeBackend {
  readonly received: Execute[] = [];
  readonly deadLetters: { content: Buffer; headers: Record<string, any>; routingKey: string }[] =
    [];
  behaviour: (execute: Execute) => Action = () => ({ kind: 'complete' });
  private replies = new Map<string, (body: any) => void>();

  private constructor(
    private readonly connection: amqp.ChannelModel,
    private readonly channel: amqp.ConfirmChannel,
    private readonly exchange: string,
    private readonly queue: string,
    readonly replyQueue: string,
  ) {}

  static async start(
    env: Record<string, string>,
    options: { bindings?: string[]; deadLetters?: boolean } = {},
  ): Promise<FakeBackend> {
    const exchange = env['RABBITMQ_EXCHANGE'] ?? '';
    const connection = await amqp.connect(env['RABBITMQ_URL'] ?? RABBITMQ_URL);
    const channel = await connection.createConfirmChannel();
    await channel.prefetch(500);
    const { queue } = await channel.assertQueue('', { exclusive: true, autoDelete: true });
    const replies = await channel.assertQueue('', { exclusive: true, autoDelete: true });
    const backend = new FakeBackend(connection, channel, exchange, queue, replies.queue);
    for (const key of options.bindings ?? ['jobs.execute.#']) await backend.bind(key);

    await channel.consume(queue, (message) => {
      if (!message) return;
      channel.ack(message);
      const execute: Execute = {
        body: JSON.parse(message.content.toString()),
        properties: message.properties,
        routingKey: message.fields.routingKey,
        receivedAt: Date.now(),
      };
      backend.received.push(execute);
      // A reply in flight when the test closes the backend is dropped.
      void backend.act(execute, backend.behaviour(execute)).catch(() => {});
    });
    await channel.consume(replies.queue, (message) => {
      if (!message) return;
      channel.ack(message);
      backend.replies.get(message.properties.correlationId)?.(
        JSON.parse(message.content.toString()),
      );
    });
    if (options.deadLetters) {
      await channel.consume(env['RABBITMQ_DEAD_LETTER_QUEUE'] ?? '', (message) => {
        if (!message) return;
        channel.ack(message);
        backend.deadLetters.push({
          content: message.content,
          headers: message.properties.headers ?? {},
          routingKey: message.fields.routingKey,
        });
      });
    }
    return backend;
  }

  async bind(key: string): Promise<void> {
    await this.channel.bindQueue(this.queue, this.exchange, key);
  }

  private async act(execute: Execute, action: Action): Promise<void> {
    const { job_id: jobId, attempt } = execute.body;
    if (action.kind === 'silent') return;
    if (action.kind === 'complete') {
      await this.publish('jobs.completed', {
        event_type: 'jobs.completed',
        job_id: jobId,
        completed_at: new Date().toISOString(),
        execution_duration_ms: 3,
        result: action.result === undefined ? { done: true } : action.result,
        ...(action.attempt !== false && { attempt }),
      });
    } else {
      await this.publish('jobs.failed', {
        event_type: 'jobs.failed',
        job_id: jobId,
        failed_at: new Date().toISOString(),
        error_message: action.error ?? 'backend failed',
        should_retry: action.shouldRetry ?? true,
        ...(action.attempt !== false && { attempt }),
      });
    }
  }

  /** Publishes a raw body (a string is sent as it is) to the scheduler's exchange. */
  async publish(
    routingKey: string,
    body: unknown,
    properties: amqp.Options.Publish = {},
  ): Promise<void> {
    const content =
      typeof body === 'string' || Buffer.isBuffer(body)
        ? Buffer.from(body)
        : Buffer.from(JSON.stringify(body));
    this.channel.publish(this.exchange, routingKey, content, {
      contentType: 'application/json',
      persistent: true,
      ...properties,
    });
    await this.channel.waitForConfirms();
  }

  /** Sends a command with `reply_to` and resolves with the scheduler's answer. */
  async command(routingKey: string, body: unknown, timeoutMs = 10_000): Promise<any> {
    const correlationId = randomUUID();
    const answer = new Promise<any>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no reply to ${routingKey}`)), timeoutMs);
      this.replies.set(correlationId, (reply) => {
        clearTimeout(timer);
        resolve(reply);
      });
    });
    await this.publish(routingKey, body, { replyTo: this.replyQueue, correlationId });
    return answer;
  }

  executesOf(jobId: string): Execute[] {
    return this.received.filter((e) => e.body.job_id === jobId);
  }

  waitForExecutes(jobId: string, count: number, timeoutMs = 10_000): Promise<Execute[]> {
    return eventually(
      () => {
        const got = this.executesOf(jobId);
        return got.length >= count ? got : undefined;
      },
      timeoutMs,
      `${count} execute message(s) for ${jobId}`,
    );
  }

  async close(): Promise<void> {
    await this.channel.close().catch(() => {});
    await this.connection.close().catch(() => {});
  }
}

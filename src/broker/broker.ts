import amqp from 'amqplib';
import rascal from 'rascal';
import type { Logger } from 'pino';
import type { Config } from '../../config/env.js';
import {
  PUBLICATIONS,
  queuePlans,
  rascalConfig,
  REASON_HEADER,
  SUBSCRIPTIONS,
  type QueuePlan,
} from '../../config/topology.js';
import { InvalidMessageError } from './messages.js';
import { isTransient } from '../errors.js';
import type { SchedulerEventBus } from '../events.js';

const { BrokerAsPromised } = rascal;

/** Header counting how often the service has handled a message and failed. */
const TRIES_HEADER = 'x-scheduler-tries';
/** Header keeping a requeued message's original routing key. */
const ROUTING_KEY_HEADER = 'x-scheduler-routing-key';

/** A publish that did not reach a queue with a confirm: nacked, returned, timed out, closed. */
export class PublishError extends Error {
  override readonly name = 'PublishError';
  constructor(
    readonly kind: 'return' | 'nack' | 'timeout' | 'error',
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export interface IncomingMessage {
  content: Buffer;
  routingKey: string;
  replyTo: string | undefined;
  correlationId: string | undefined;
  messageId: string | undefined;
  /** How many times the service handled this message before and failed. */
  tries: number;
}

/** Handles one message; the message is acked when the promise resolves. */
export type MessageHandler = (message: IncomingMessage) => Promise<void>;

export interface PublishProperties {
  messageId?: string;
  correlationId?: string;
  type?: string;
  timestamp?: number;
  headers?: Record<string, unknown>;
}

type RascalBroker = Awaited<ReturnType<typeof BrokerAsPromised.create>>;
type Session = Awaited<ReturnType<RascalBroker['subscribe']>>;
type RawMessage = amqp.Message;
type AckOrNack = (err?: Error, recovery?: unknown) => Promise<void>;
type ReturnedMessage = { fields: { routingKey: string; replyCode: number; replyText: string } };
/** A publication session's events (the published typings lack `close` and `abort`). */
interface PublicationEvents {
  on(event: string, listener: (...args: never[]) => void): PublicationEvents;
  abort(): void;
}

/** Hides the password of every URL in a text (a message may quote more than one). */
export function redactUrl(url: string): string {
  return url.replace(/\/\/([^\s:@/]+):([^\s@/]*)@/g, '//$1:***@');
}

/**
 * Finds queues that already exist with other arguments (the earlier service's
 * classic results queue, say). Declaring them with ours would fail start-up
 * with 406 PRECONDITION_FAILED, so they are used as they are, with a warning
 * that names the difference.
 */
async function planQueues(config: Config['rabbitmq'], logger: Logger): Promise<QueuePlan[]> {
  const plans = queuePlans(config);
  const connection = await amqp.connect(config.url);
  connection.on('error', () => {});
  try {
    for (const plan of plans) {
      const probe = await connection.createChannel();
      probe.on('error', () => {});
      try {
        await probe.checkQueue(plan.name);
      } catch {
        continue; // missing: Rascal declares it with our arguments
      }
      await probe.close().catch(() => {});
      const declare = await connection.createChannel();
      declare.on('error', () => {});
      try {
        await declare.assertQueue(plan.name, { durable: true, arguments: plan.arguments });
        await declare.close().catch(() => {});
      } catch (err) {
        plan.assert = false;
        logger.warn(
          { queue: plan.name, wanted: plan.arguments, difference: (err as Error).message },
          'queue exists with other arguments; using it as it is, without a broker delivery limit',
        );
      }
    }
  } finally {
    await connection.close().catch(() => {});
  }
  return plans;
}

/**
 * RabbitMQ through Rascal: topology, confirmed publishes, and subscriptions
 * whose handler decides when a message is acked. It knows nothing of jobs.
 */
export class Broker {
  private connected = true;
  private readonly sessions: Session[] = [];
  private readonly deferred = new Map<NodeJS.Timeout, () => void>();
  private readonly inflight = new Set<Promise<void>>();
  /** Publishes waiting for one of the `publishChannels` confirm channels. */
  private readonly waiting: (() => void)[] = [];
  private publishing = 0;
  private closing = false;

  private constructor(
    private readonly rascalBroker: RascalBroker,
    private readonly config: Config['rabbitmq'],
    private readonly logger: Logger,
    private readonly events?: SchedulerEventBus,
  ) {
    rascalBroker.on('error', (err: Error) => {
      // Logged whole, with its stack, code and cause: the service's logger
      // hides the password of any URL in the line (createScrubber, src/logger.ts).
      logger.error({ err }, 'broker error');
    });
    rascalBroker.on('disconnect', () => {
      if (this.connected) {
        logger.warn('broker connection lost; reconnecting');
        this.events?.emit('broker', { up: false });
      }
      this.connected = false;
    });
    rascalBroker.on('connect', () => {
      if (!this.connected) {
        logger.info('broker connection restored');
        this.events?.emit('broker', { up: true });
      }
      this.connected = true;
    });
    rascalBroker.on('blocked', (reason: string) => logger.warn({ reason }, 'broker blocked us'));
  }

  static async connect(
    config: Config['rabbitmq'],
    logger: Logger,
    events?: SchedulerEventBus,
  ): Promise<Broker> {
    const where = redactUrl(config.url);
    try {
      const plans = await planQueues(config, logger);
      const created = await createRascal(rascalConfig(config, plans));
      return new Broker(created, config, logger, events);
    } catch (err) {
      throw new Error(
        `cannot set up RabbitMQ at ${where}: ${redactUrl((err as Error).message)}; ` +
          'check that it runs and the RABBITMQ_* settings',
        { cause: err },
      );
    }
  }

  /** True while the connection is up. */
  get isConnected(): boolean {
    return this.connected && !this.closing;
  }

  /**
   * Publishes and resolves once the broker confirms. Rejects with `PublishError`
   * on a nack, on a return (no queue took a mandatory message), on a close, or
   * when no confirm came within the publish timeout; a timed-out publish is
   * aborted if it has not gone out yet.
   */
  publish(
    publication: string,
    content: Buffer,
    routingKey: string,
    properties: PublishProperties = {},
  ): Promise<void> {
    const publishing = this.confirmed(publication, content, routingKey, properties);
    this.inflight.add(publishing);
    void publishing.catch(() => {}).finally(() => this.inflight.delete(publishing));
    return publishing;
  }

  /**
   * Queues publishes here once every confirm channel is borrowed. Left to
   * Rascal, each waiting publish holds a listener on the vhost, and removing
   * thousands of them one by one took a quarter of the CPU at 5,000 jobs.
   */
  private async confirmed(
    publication: string,
    content: Buffer,
    routingKey: string,
    properties: PublishProperties,
  ): Promise<void> {
    if (this.publishing >= this.config.publishChannels) {
      await new Promise<void>((resolve) => this.waiting.push(resolve));
    }
    this.publishing += 1;
    try {
      await this.publishOnce(publication, content, routingKey, properties);
    } finally {
      this.publishing -= 1;
      this.waiting.shift()?.();
    }
  }

  private async publishOnce(
    publication: string,
    content: Buffer,
    routingKey: string,
    properties: PublishProperties,
  ): Promise<void> {
    const timeoutMs = this.config.publishTimeoutMs;
    const session = (await this.rascalBroker.publish(publication, content, {
      routingKey,
      options: properties,
    })) as unknown as PublicationEvents;
    await new Promise<void>((resolve, reject) => {
      let settled = false;
      const settle = (outcome: () => void) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        outcome();
      };
      const timer = setTimeout(() => {
        settle(() => {
          session.abort();
          reject(new PublishError('timeout', `no confirm within ${timeoutMs} ms`));
        });
      }, timeoutMs);
      // A return arrives before the confirm of the same message.
      session.on('return', (message: ReturnedMessage) =>
        settle(() =>
          reject(
            new PublishError(
              'return',
              `unroutable: no queue bound to ${message.fields.routingKey} ` +
                `(${message.fields.replyCode} ${message.fields.replyText})`,
            ),
          ),
        ),
      );
      session.on('success', () => settle(resolve));
      session.on('error', (err: Error) =>
        settle(() =>
          reject(
            new PublishError(/nack/i.test(err.message) ? 'nack' : 'error', err.message, {
              cause: err,
            }),
          ),
        ),
      );
      session.on('close', () =>
        settle(() => reject(new PublishError('error', 'channel closed before the confirm'))),
      );
    });
  }

  /**
   * Consumes a subscription. The handler's resolution acks the message. An
   * `InvalidMessageError` dead-letters it at once with its reason; any other
   * failure puts it back at the tail of its queue after a pause, and after
   * MESSAGE_MAX_TRIES failures dead-letters it, whatever the queue's arguments.
   */
  async consume(subscription: string, handler: MessageHandler): Promise<void> {
    const queue =
      subscription === SUBSCRIPTIONS.results ? this.config.resultsQueue : this.config.commandsQueue;
    const session = await this.rascalBroker.subscribe(subscription);
    this.sessions.push(session);
    session.on('error', (err: Error) => {
      this.logger.error({ err, subscription }, 'subscription error');
    });
    session.on('message', (message: RawMessage, content: Buffer, ackOrNack) => {
      void this.handle(queue, message, content, ackOrNack as unknown as AckOrNack, handler).catch(
        (err: unknown) => {
          this.logger.error({ err, subscription }, 'message left unacked until the channel closes');
        },
      );
    });
  }

  private async handle(
    queue: string,
    message: RawMessage,
    content: Buffer,
    ackOrNack: AckOrNack,
    handler: MessageHandler,
  ): Promise<void> {
    const headers = message.properties.headers ?? {};
    const incoming: IncomingMessage = {
      content,
      routingKey: String(headers[ROUTING_KEY_HEADER] ?? message.fields.routingKey),
      replyTo: message.properties.replyTo || undefined,
      correlationId: message.properties.correlationId || undefined,
      messageId: message.properties.messageId || undefined,
      tries: Number(headers[TRIES_HEADER] ?? 0),
    };
    try {
      try {
        await handler(incoming);
      } catch (err) {
        if (err instanceof InvalidMessageError) {
          await this.deadLetter(message, content, err.reason);
        } else {
          await this.retryLater(queue, message, content, incoming, err as Error);
        }
      }
      await ackOrNack();
    } catch (err) {
      // Neither handled nor moved elsewhere: back to the broker, whose delivery
      // limit ends a loop. The pause keeps a broken dead-letter route from spinning.
      this.logger.error(
        { err, routingKey: incoming.routingKey },
        'returning message to the broker',
      );
      await this.pause(1000);
      await ackOrNack(err as Error, { strategy: 'nack', requeue: true });
    }
  }

  private async retryLater(
    queue: string,
    message: RawMessage,
    content: Buffer,
    incoming: IncomingMessage,
    err: Error,
  ): Promise<void> {
    // An outage (database down, shutting down) says nothing about the message:
    // it goes back without counting, or an outage of seconds would dead-letter
    // every reply that arrived meanwhile.
    const tries = isTransient(err) ? incoming.tries : incoming.tries + 1;
    if (tries >= this.config.maxTries) {
      this.logger.error(
        { err, routingKey: incoming.routingKey, tries },
        'handling kept failing; dead-lettering the message',
      );
      await this.deadLetter(message, content, `handling failed ${tries} times: ${err.message}`);
      return;
    }
    this.logger.warn({ err, routingKey: incoming.routingKey, tries }, 'handling failed; retrying');
    await this.pause(Math.min(200 * 2 ** Math.max(tries, 1), 5000));
    await this.publish(PUBLICATIONS.requeue, content, queue, {
      ...message.properties,
      headers: {
        ...message.properties.headers,
        [TRIES_HEADER]: tries,
        [ROUTING_KEY_HEADER]: incoming.routingKey,
      },
    } as PublishProperties);
  }

  /** Republishes a message to the dead-letter exchange with its reason, with a confirm. */
  async deadLetter(message: RawMessage, content: Buffer, reason: string): Promise<void> {
    const headers = message.properties.headers ?? {};
    const routingKey = String(headers[ROUTING_KEY_HEADER] ?? message.fields.routingKey);
    this.logger.warn({ routingKey, reason }, 'dead-lettering a message');
    await this.publish(PUBLICATIONS.deadLetter, content, routingKey, {
      ...message.properties,
      headers: { ...headers, [REASON_HEADER]: reason },
    } as PublishProperties);
  }

  /** Waits `ms`, or less when the broker closes meanwhile. */
  private pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.deferred.delete(timer);
        resolve();
      }, ms);
      this.deferred.set(timer, resolve);
    });
  }

  /** Stops consuming; unacked messages go back to their queues. */
  async stopConsuming(): Promise<void> {
    const sessions = this.sessions.splice(0);
    await Promise.all(sessions.map((s) => s.cancel().catch(() => {})));
  }

  async close(): Promise<void> {
    this.closing = true;
    for (const [timer, resolve] of this.deferred) {
      clearTimeout(timer);
      resolve();
    }
    this.deferred.clear();
    await this.stopConsuming();
    // A channel closed under a publish still waiting for its confirm fails it;
    // let them settle (each is bounded by the publish timeout) first.
    await Promise.allSettled([...this.inflight]);
    await this.rascalBroker.shutdown();
  }
}

async function createRascal(config: unknown): Promise<RascalBroker> {
  try {
    return await BrokerAsPromised.create(config as rascal.BrokerConfig);
  } catch (err) {
    // A half-built broker keeps the process alive: shut it down before giving up.
    const half = (err as Record<string, unknown>)['broker'];
    const broker = half ? ((err as Record<string, unknown>)[half as string] as RascalBroker) : null;
    await broker?.shutdown().catch(() => {});
    throw err;
  }
}

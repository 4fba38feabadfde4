import type { Config } from './env.js';

/** The vhost key Rascal files everything under; the real vhost comes from the URL. */
export const VHOST = 'scheduler';

/** Names of the publications and subscriptions the service uses. */
export const PUBLICATIONS = {
  execute: 'execute',
  reply: 'reply',
  deadLetter: 'dead-letter',
  requeue: 'requeue',
} as const;
export const SUBSCRIPTIONS = { results: 'results', commands: 'commands' } as const;

/** Routing keys of the wire contract (PROTOCOL.md). */
export const ROUTING = {
  executePrefix: 'jobs.execute.',
  replies: ['jobs.completed', 'jobs.failed'],
  commands: ['jobs.schedule', 'jobs.cancel', 'jobs.reschedule'],
} as const;

/** Header naming why the service dead-lettered a message. */
export const REASON_HEADER = 'x-scheduler-reason';

/** Arguments of a queue the service consumes from. */
export function consumedQueueArguments(config: Config['rabbitmq']): Record<string, unknown> {
  return {
    'x-queue-type': 'quorum',
    'x-dead-letter-exchange': config.deadLetterExchange,
    // A message whose handling crashes the process over and over is dead-lettered
    // by the broker after this many deliveries; the service's own bound
    // (MESSAGE_MAX_TRIES) acts first on handled failures.
    'x-delivery-limit': config.deliveryLimit,
    // Without these two a quorum queue drops a dead-lettered message the DLX cannot take.
    'x-dead-letter-strategy': 'at-least-once',
    'x-overflow': 'reject-publish',
  };
}

export interface QueuePlan {
  name: string;
  arguments: Record<string, unknown>;
  /** False for a queue that exists with other arguments: used as it is. */
  assert: boolean;
}

export function queuePlans(config: Config['rabbitmq']): QueuePlan[] {
  return [
    { name: config.resultsQueue, arguments: consumedQueueArguments(config), assert: true },
    { name: config.commandsQueue, arguments: consumedQueueArguments(config), assert: true },
    { name: config.deadLetterQueue, arguments: { 'x-queue-type': 'quorum' }, assert: true },
  ];
}

/** The whole Rascal topology: exchanges, queues, bindings, publications, subscriptions. */
export function rascalConfig(config: Config['rabbitmq'], queues: QueuePlan[]) {
  const [results, commands, deadLetter] = queues as [QueuePlan, QueuePlan, QueuePlan];
  const queue = (plan: QueuePlan) =>
    plan.assert
      ? { assert: true, options: { durable: true, arguments: plan.arguments } }
      : { assert: false, check: true };

  return {
    vhosts: {
      [VHOST]: {
        connection: {
          url: config.url,
          options: { heartbeat: 10, connection_timeout: 10_000 },
          // Nagle's algorithm held a confirmed publish for ~40 ms.
          socketOptions: { timeout: 10_000, noDelay: true },
          retry: { min: 500, max: 10_000, factor: 2, strategy: 'exponential' },
        },
        // A confirm channel stays borrowed until its confirm: the pool bounds
        // publishes in flight (5, the default, gave ~1,900/s; 50 gave ~3,500/s).
        publicationChannelPools: {
          confirmPool: { min: 1, max: config.publishChannels },
        },
        exchanges: {
          [config.exchange]: { type: 'topic', options: { durable: true } },
          [config.deadLetterExchange]: { type: 'topic', options: { durable: true } },
        },
        queues: {
          [results.name]: queue(results),
          [commands.name]: queue(commands),
          [deadLetter.name]: queue(deadLetter),
        },
        bindings: {
          results: {
            source: config.exchange,
            destination: results.name,
            bindingKeys: [...ROUTING.replies],
          },
          commands: {
            source: config.exchange,
            destination: commands.name,
            bindingKeys: [...ROUTING.commands],
          },
          deadLetter: {
            source: config.deadLetterExchange,
            destination: deadLetter.name,
            bindingKeys: ['#'],
          },
        },
        publications: {
          [PUBLICATIONS.execute]: {
            exchange: config.exchange,
            confirm: true,
            options: { persistent: true, mandatory: true, contentType: 'application/json' },
          },
          // Replies go to `reply_to` on the default exchange. Not mandatory: RabbitMQ
          // returns every direct reply-to publish as unroutable though it delivers it.
          [PUBLICATIONS.reply]: {
            exchange: '',
            confirm: true,
            options: { persistent: false, mandatory: false, contentType: 'application/json' },
          },
          [PUBLICATIONS.deadLetter]: {
            exchange: config.deadLetterExchange,
            confirm: true,
            options: { persistent: true, mandatory: true },
          },
          // A message whose handling failed goes back to the tail of its own queue.
          [PUBLICATIONS.requeue]: {
            exchange: '',
            confirm: true,
            options: { persistent: true, mandatory: true },
          },
        },
        subscriptions: {
          [SUBSCRIPTIONS.results]: subscription(results.name, config),
          [SUBSCRIPTIONS.commands]: subscription(commands.name, config),
        },
      },
    },
  };
}

function subscription(queue: string, config: Config['rabbitmq']) {
  return {
    queue,
    prefetch: config.prefetch,
    // Without it, shutdown waits forever for an unacked message.
    closeTimeout: 5000,
    promisifyAckOrNack: true,
    // Always a raw Buffer: the service parses, so bad JSON reaches its handler.
    contentType: 'application/octet-stream',
  };
}

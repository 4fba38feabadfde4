import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import amqp from 'amqplib';
import { loadConfig } from '../../config/env.js';
import { consumedQueueArguments, SUBSCRIPTIONS } from '../../config/topology.js';
import { Broker } from '../../src/broker/broker.js';
import {
  cleanUp,
  eventually,
  isolatedEnv,
  LogCapture,
  RABBITMQ_URL,
  uuid,
} from '../support/harness.js';

const REASON = 'x-scheduler-reason';

async function withChannel<T>(work: (channel: amqp.Channel) => Promise<T>): Promise<T> {
  const connection = await amqp.connect(RABBITMQ_URL);
  const channel = await connection.createChannel();
  channel.on('error', () => {});
  try {
    return await work(channel);
  } finally {
    await channel.close().catch(() => {});
    await connection.close();
  }
}

/** Publishes one reply and collects what reaches the dead-letter queue. */
async function poison(env: Record<string, string>, broker: Broker) {
  let calls = 0;
  await broker.consume(SUBSCRIPTIONS.results, async () => {
    calls += 1;
    throw new Error('database unreachable');
  });
  const marker = uuid();
  return withChannel(async (channel) => {
    channel.publish(
      env['RABBITMQ_EXCHANGE'] ?? '',
      'jobs.completed',
      Buffer.from(JSON.stringify({ marker })),
      { persistent: true },
    );
    const letter = await eventually(
      async () => {
        const got = await channel.get(env['RABBITMQ_DEAD_LETTER_QUEUE'] ?? '', { noAck: true });
        return got && got.content.toString().includes(marker) ? got : undefined;
      },
      15_000,
      'the poison message in the dead-letter queue',
    );
    return { letter, calls };
  });
}

describe('a message whose handling keeps failing', () => {
  const envs: Record<string, string>[] = [];
  after(async () => {
    for (const env of envs) await cleanUp(env);
  });

  it('is dead-lettered by the service after MESSAGE_MAX_TRIES tries, on its quorum queue', async () => {
    const env = isolatedEnv({ MESSAGE_MAX_TRIES: '3' });
    envs.push(env);
    const logs = new LogCapture();
    const broker = await Broker.connect(loadConfig(env).rabbitmq, logs.logger);
    try {
      const { letter, calls } = await poison(env, broker);
      assert.equal(calls, 3);
      assert.equal(letter.fields.routingKey, 'jobs.completed');
      assert.equal(
        String(letter.properties.headers?.[REASON]),
        'handling failed 3 times: database unreachable',
      );
      assert.equal(logs.find('handling kept failing; dead-lettering the message').length, 1);

      // Redeclaring with exactly these arguments is accepted only if the queue has
      // them all: quorum type, delivery limit, dead-letter exchange and strategy.
      const expected = consumedQueueArguments(loadConfig(env).rabbitmq);
      assert.equal(expected['x-queue-type'], 'quorum');
      const redeclared = await withChannel((channel) =>
        channel
          .assertQueue(env['RABBITMQ_QUEUE_NAME'] ?? '', { durable: true, arguments: expected })
          .then(
            () => 'accepted',
            (err: Error) => err.message,
          ),
      );
      assert.equal(redeclared, 'accepted');
    } finally {
      await broker.close();
    }
  });

  it('is bounded the same on a results queue that already exists as a classic queue', async () => {
    const env = isolatedEnv({ MESSAGE_MAX_TRIES: '2' });
    envs.push(env);
    await withChannel((channel) =>
      channel.assertQueue(env['RABBITMQ_QUEUE_NAME'] ?? '', { durable: true }),
    );
    const logs = new LogCapture();
    const broker = await Broker.connect(loadConfig(env).rabbitmq, logs.logger);
    try {
      const warning = logs.find(/queue exists with other arguments/)[0];
      assert.ok(warning, 'a warning names the queue');
      assert.equal(warning['queue'], env['RABBITMQ_QUEUE_NAME']);
      assert.match(String(warning['difference']), /inequivalent arg/);

      const { letter, calls } = await poison(env, broker);
      assert.equal(calls, 2);
      assert.match(String(letter.properties.headers?.[REASON]), /handling failed 2 times/);
    } finally {
      await broker.close();
    }
  });
});

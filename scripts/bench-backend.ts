/**
 * The backend's part for the benchmark, in its own process so its work does
 * not count against the service: consumes `jobs.execute.#` on the exchange
 * given and answers each with `jobs.completed` at once. Prints "ready" once
 * bound; stops on SIGTERM.
 */
import amqp from 'amqplib';

const [url, exchange] = process.argv.slice(2) as [string, string];
const connection = await amqp.connect(url);
const channel = await connection.createChannel();
await channel.prefetch(1000);
const { queue } = await channel.assertQueue('', { exclusive: true });
await channel.bindQueue(queue, exchange, 'jobs.execute.#');
await channel.consume(queue, (message) => {
  if (!message) return;
  const body = JSON.parse(message.content.toString());
  const reply = {
    event_type: 'jobs.completed',
    job_id: body.job_id,
    completed_at: new Date().toISOString(),
    attempt: body.attempt,
  };
  channel.publish(exchange, 'jobs.completed', Buffer.from(JSON.stringify(reply)), {
    persistent: true,
    contentType: 'application/json',
  });
  channel.ack(message);
});
console.log('ready');
process.once('SIGTERM', () => {
  void connection.close().finally(() => process.exit(0));
});

import type { Logger } from 'pino';
import type { IncomingMessage, MessageHandler } from '../broker/broker.js';
import { parseJson, parseReply } from '../broker/messages.js';
import type { JobEvent } from '../../machines/job.machine.js';
import type { JobRuntime } from '../runtime/job-runtime.js';

/**
 * Handles `jobs.completed` / `jobs.failed` from the backend: checks the body,
 * hands the reply to its job, and resolves once the change it caused is
 * committed (the broker acks then). An invalid body throws
 * `InvalidMessageError` and is dead-lettered; a stale or unknown one is a warning.
 */
export function createReplyHandler(
  runtime: JobRuntime,
  options: { maxBytes: number; logger: Logger; now?: () => number; random?: () => number },
): MessageHandler {
  const now = options.now ?? Date.now;
  const random = options.random ?? Math.random;

  return async (message: IncomingMessage) => {
    const reply = parseReply(message.routingKey, parseJson(message.content, options.maxBytes));
    const event: JobEvent =
      reply.event_type === 'jobs.completed'
        ? {
            type: 'jobs.completed',
            at: now(),
            result: reply.result ?? null,
            ...(reply.attempt !== undefined && { attempt: reply.attempt }),
          }
        : {
            type: 'jobs.failed',
            at: now(),
            errorMessage: reply.error_message,
            shouldRetry: reply.should_retry,
            jitter: random(),
            ...(reply.attempt !== undefined && { attempt: reply.attempt }),
          };

    const outcome = await runtime.send(reply.job_id, event);
    const fields = { job_id: reply.job_id, reply: reply.event_type, attempt: reply.attempt };
    if (outcome.kind === 'unknown') {
      options.logger.warn(fields, 'reply for an unknown job; acknowledged and dropped');
    } else if (outcome.kind === 'ignored') {
      options.logger.warn({ ...fields, reason: outcome.reason }, 'reply changed nothing');
    }
  };
}

import type { Logger } from 'pino';
import { z } from 'zod';
import type { IncomingMessage, MessageHandler } from '../broker/broker.js';
import {
  check,
  createScheduleSchema,
  InvalidMessageError,
  parseJson,
  instant,
  type CommandLimits,
} from '../broker/messages.js';
import { RequestRefused, type JobService } from '../runtime/job-service.js';

/** Sends a command's answer to its `reply_to`, after the change is committed. */
export type ReplySender = (
  replyTo: string,
  correlationId: string | undefined,
  body: unknown,
) => Promise<void>;

const target = {
  job_id: z.uuid('expected a UUID').optional(),
  idempotency_key: z.string().min(1).max(255).optional(),
  subject: z.string().min(1).max(255).optional(),
};

const oneTarget = (b: { job_id?: unknown; idempotency_key?: unknown; subject?: unknown }) =>
  [b.job_id, b.idempotency_key, b.subject].filter((v) => v !== undefined).length === 1;

const cancelSchema = z
  .object({ event_type: z.literal('jobs.cancel').optional(), ...target })
  .refine(oneTarget, {
    message: 'give exactly one of job_id, idempotency_key and subject',
    path: ['job_id'],
  });

function createRescheduleSchema(limits: CommandLimits) {
  return z
    .object({
      event_type: z.literal('jobs.reschedule').optional(),
      ...target,
      scheduled_for: instant.optional(),
      delay_seconds: z.number().min(0).max(limits.maxDelaySeconds).optional(),
      anchor_at: instant.optional(),
    })
    .refine(oneTarget, {
      message: 'give exactly one of job_id, idempotency_key and subject',
      path: ['job_id'],
    })
    .superRefine((b, ctx) => {
      if (b.subject !== undefined) {
        if (
          b.anchor_at === undefined ||
          b.scheduled_for !== undefined ||
          b.delay_seconds !== undefined
        ) {
          ctx.addIssue({
            code: 'custom',
            path: ['anchor_at'],
            message: 'a subject is rescheduled by anchor_at alone',
          });
        }
      } else if (
        (b.scheduled_for === undefined) === (b.delay_seconds === undefined) ||
        b.anchor_at !== undefined
      ) {
        ctx.addIssue({
          code: 'custom',
          path: ['scheduled_for'],
          message: 'give exactly one of scheduled_for and delay_seconds',
        });
      }
    });
}

/**
 * Handles `jobs.schedule`, `jobs.cancel` and `jobs.reschedule`. Every command
 * with `reply_to` gets an answer: `ok: true` after the change is committed,
 * `ok: false` naming the field or the reason. An invalid command is answered
 * and then dead-lettered; a valid one that cannot be done is answered and acked.
 */
export function createCommandHandler(
  service: JobService,
  options: {
    limits: CommandLimits;
    maxBytes: number;
    logger: Logger;
    reply: ReplySender;
    now?: () => number;
    findByKey: (key: string) => Promise<string | null>;
  },
): MessageHandler {
  const schedule = createScheduleSchema(options.limits);
  const reschedule = createRescheduleSchema(options.limits);
  const now = options.now ?? Date.now;

  const resolveId = async (ref: {
    job_id?: string | undefined;
    idempotency_key?: string | undefined;
  }) => {
    if (ref.job_id) return ref.job_id;
    const id = await options.findByKey(ref.idempotency_key ?? '');
    if (!id)
      throw new RequestRefused('not_found', `no job has idempotency_key ${ref.idempotency_key}`);
    return id;
  };

  const run = async (message: IncomingMessage): Promise<Record<string, unknown>> => {
    const body = parseJson(message.content, options.maxBytes);
    switch (message.routingKey) {
      case 'jobs.schedule': {
        const result = await service.schedule(check(schedule, body));
        return {
          ok: true,
          job_id: result.jobId,
          state: result.state,
          ...(result.duplicate && { duplicate: true }),
        };
      }
      case 'jobs.cancel': {
        const command = check(cancelSchema, body);
        if (command.subject !== undefined) {
          const ids = await service.cancelSubject(command.subject);
          return { ok: true, job_ids: ids, count: ids.length };
        }
        const id = await resolveId(command);
        return { ok: true, job_id: id, state: await service.cancel(id) };
      }
      case 'jobs.reschedule': {
        const command = check(reschedule, body);
        if (command.subject !== undefined) {
          const ids = await service.rescheduleSubject(command.subject, command.anchor_at ?? 0);
          return { ok: true, job_ids: ids, count: ids.length };
        }
        const dueAt =
          command.scheduled_for ?? now() + Math.round((command.delay_seconds ?? 0) * 1000);
        const id = await resolveId(command);
        return { ok: true, job_id: id, state: await service.reschedule(id, dueAt) };
      }
      default:
        throw new InvalidMessageError(`routing key ${message.routingKey} is not a command`);
    }
  };

  return async (message: IncomingMessage) => {
    let answer: Record<string, unknown>;
    let invalid: InvalidMessageError | undefined;
    try {
      answer = await run(message);
    } catch (err) {
      if (err instanceof InvalidMessageError) {
        invalid = err;
        answer = { ok: false, error: err.reason };
      } else if (err instanceof RequestRefused) {
        answer = { ok: false, error: err.message };
      } else {
        throw err; // not answered: the broker retries the command
      }
      options.logger.warn(
        { command: message.routingKey, error: answer['error'] },
        'command refused',
      );
    }
    if (message.replyTo) {
      try {
        await options.reply(message.replyTo, message.correlationId, answer);
      } catch (err) {
        // The change is committed: running the command again to answer it
        // could create a second job. The requester times out instead.
        options.logger.error(
          { err, command: message.routingKey, reply_to: message.replyTo },
          'could not send the answer to a command',
        );
      }
    }
    if (invalid) throw invalid;
  };
}

import Router from '@koa/router';
import { Cursor } from '@mikro-orm/core';
import type { Context } from 'koa';
import getRawBody from 'raw-body';
import { z } from 'zod';
import { JOB_TYPE_NAMES } from '../../config/job-types.js';
import { JOB_STATES } from '../../machines/job.machine.js';
import {
  check,
  checkStorable,
  createScheduleSchema,
  instant,
  InvalidMessageError,
  type CommandLimits,
} from '../broker/messages.js';
import { VersionConflictError } from '../store/group-commit.js';
import { RequestRefused, type JobService } from '../runtime/job-service.js';
import { HttpError, requireService, type Services } from './app.js';

const uuid = z.uuid();

function createRescheduleBody(limits: CommandLimits) {
  return z
    .object({
      scheduled_for: instant.optional(),
      delay_seconds: z.number().min(0).max(limits.maxDelaySeconds).optional(),
    })
    .refine((b) => (b.scheduled_for === undefined) !== (b.delay_seconds === undefined), {
      message: 'give exactly one of scheduled_for and delay_seconds',
      path: ['scheduled_for'],
    });
}

const retryBody = z.object({
  max_attempts: z.number().int().min(1).max(1000).optional(),
  expires_at: instant.nullable().optional(),
});

const listQuery = z.object({
  state: z.enum(JOB_STATES, `expected one of ${JOB_STATES.join(', ')}`).optional(),
  job_type: z.enum(JOB_TYPE_NAMES, 'unknown job type').optional(),
  subject: z.string().min(1).max(255).optional(),
  limit: z.coerce.number().int().min(1).max(500).default(50),
  cursor: z.string().min(1).optional(),
});

/** Reads a JSON body up to `maxBytes`: 413 beyond, 400 for one that is not JSON. */
async function readJson(ctx: Context, maxBytes: number): Promise<unknown> {
  let text: string;
  try {
    text = await getRawBody(ctx.req, { limit: maxBytes, encoding: 'utf8' });
  } catch (err) {
    if ((err as { type?: string }).type === 'entity.too.large') {
      throw new HttpError(413, 'payload_too_large', `body is over the limit of ${maxBytes} bytes`);
    }
    throw err;
  }
  if (text.trim() === '') return {};
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch (err) {
    throw new HttpError(400, 'invalid_json', `body is not valid JSON: ${(err as Error).message}`);
  }
  try {
    checkStorable(body);
  } catch (err) {
    throw asHttpError(err);
  }
  return body;
}

function checked<T>(schema: z.ZodType<T>, body: unknown): T {
  try {
    return check(schema, body);
  } catch (err) {
    throw asHttpError(err);
  }
}

/** Maps the errors of the job service to the statuses of PROTOCOL.md. */
function asHttpError(err: unknown): unknown {
  if (err instanceof InvalidMessageError) {
    return new HttpError(400, 'invalid', err.reason, err.field);
  }
  if (err instanceof RequestRefused) {
    const status = err.code === 'not_found' ? 404 : 409;
    return new HttpError(status, err.code, err.message);
  }
  if (err instanceof VersionConflictError) {
    return new HttpError(409, 'conflict', 'the job changed meanwhile; try again');
  }
  return err;
}

/** A cursor this service gave: the (scheduled_for, job_id) of a page's last job. */
function validCursor(cursor: string): boolean {
  try {
    const [at, id] = Cursor.decode(cursor);
    return (
      typeof id === 'string' && uuid.safeParse(id).success && !Number.isNaN(Date.parse(String(at)))
    );
  } catch {
    return false;
  }
}

function jobId(ctx: Context): string {
  const id = (ctx.params as Record<string, string>)['id'] ?? '';
  if (!uuid.safeParse(id).success) {
    throw new HttpError(400, 'invalid_job_id', 'job id must be a UUID', 'job_id');
  }
  return id;
}

/**
 * The jobs API of PROTOCOL.md: create, read, list, reschedule, cancel, retry.
 * Same validation and error bodies as the commands over RabbitMQ.
 */
export function createJobsRouter(
  services: Services,
  options: { limits: CommandLimits; maxBytes: number; now?: () => number },
): Router {
  const router = new Router();
  const schedule = createScheduleSchema(options.limits);
  const rescheduleBody = createRescheduleBody(options.limits);
  const now = options.now ?? Date.now;
  const jobs = (): JobService => requireService(services.jobs);
  const run = async <T>(work: () => Promise<T>): Promise<T> => {
    try {
      return await work();
    } catch (err) {
      throw asHttpError(err);
    }
  };

  router.post('/jobs', async (ctx) => {
    const command = checked(schedule, await readJson(ctx, options.maxBytes));
    const result = await run(() => jobs().schedule(command));
    ctx.status = result.duplicate ? 200 : 201;
    ctx.body = await run(() => jobs().view(result.jobId));
  });

  router.get('/jobs', async (ctx) => {
    const query = checked(listQuery, ctx.query);
    if (query.cursor && !validCursor(query.cursor)) {
      throw new HttpError(400, 'invalid_cursor', 'cursor is not one this service gave', 'cursor');
    }
    const page = await run(() =>
      jobs().list({
        limit: query.limit,
        ...(query.state && { state: query.state }),
        ...(query.job_type && { jobType: query.job_type }),
        ...(query.subject && { subject: query.subject }),
        ...(query.cursor && { cursor: query.cursor }),
      }),
    );
    ctx.body = { jobs: page.jobs, next_cursor: page.nextCursor };
  });

  router.get('/jobs/:id', async (ctx) => {
    const id = jobId(ctx);
    const view = await jobs().get(id);
    if (!view) throw new HttpError(404, 'not_found', `job ${id} not found`);
    ctx.body = view;
  });

  router.patch('/jobs/:id', async (ctx) => {
    const id = jobId(ctx);
    const body = checked(rescheduleBody, await readJson(ctx, options.maxBytes));
    const dueAt = body.scheduled_for ?? now() + Math.round((body.delay_seconds ?? 0) * 1000);
    await run(() => jobs().reschedule(id, dueAt));
    ctx.body = await run(() => jobs().view(id));
  });

  router.delete('/jobs/:id', async (ctx) => {
    const id = jobId(ctx);
    await run(() => jobs().cancel(id));
    ctx.body = await run(() => jobs().view(id));
  });

  router.post('/jobs/:id/retry', async (ctx) => {
    const id = jobId(ctx);
    const body = checked(retryBody, await readJson(ctx, options.maxBytes));
    await run(() =>
      jobs().retry(id, {
        ...(body.max_attempts !== undefined && { maxAttempts: body.max_attempts }),
        ...(body.expires_at !== undefined && { expiresAt: body.expires_at }),
      }),
    );
    ctx.body = await run(() => jobs().view(id));
  });

  return router;
}

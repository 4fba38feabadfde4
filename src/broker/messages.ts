import { z } from 'zod';
import { isJobType, JOB_TYPE_NAMES, type JobType } from '../../config/job-types.js';

/**
 * Schemas of every message body, checked once at the edge. Unknown extra
 * fields are dropped, as the backend's own models do. Instants come out as
 * epoch milliseconds; sub-millisecond digits are cut, never rounded up.
 */

/** A body that cannot be processed; `reason` names the field and what is wrong. */
export class InvalidMessageError extends Error {
  override readonly name = 'InvalidMessageError';
  constructor(
    readonly reason: string,
    readonly field?: string,
  ) {
    super(reason);
  }
}

/** RFC 3339 with an offset (`Z` or ±HH:MM) required; to epoch ms, truncated. */
export function parseInstant(text: string): number {
  const truncated = text.replace(/(\.\d{3})\d+/, '$1');
  return Date.parse(truncated);
}

/**
 * True when the fields name a real calendar date and time: Date.parse would
 * move 2026-02-30 to March and 24:00 to the next day instead of refusing them.
 */
function realDate(text: string): boolean {
  const [, y, mo, d, h, mi, se, oh, om] =
    /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.\d+)?(?:Z|[+-](\d{2}):(\d{2}))$/i
      .exec(text)
      ?.map((field) => Number(field ?? 0)) ?? [];
  if (y === undefined || mo === undefined || d === undefined) return false;
  const daysInMonth = new Date(Date.UTC(y, mo, 0)).getUTCDate();
  return (
    mo >= 1 &&
    mo <= 12 &&
    d >= 1 &&
    d <= daysInMonth &&
    (h ?? 0) <= 23 &&
    (mi ?? 0) <= 59 &&
    (se ?? 0) <= 59 &&
    (oh ?? 0) <= 23 &&
    (om ?? 0) <= 59
  );
}

/** An RFC 3339 instant with its offset, as epoch ms. */
export const instant = z
  .string()
  .regex(
    /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/i,
    'expected an ISO-8601 datetime with a UTC offset, e.g. 2026-05-01T09:00:00+02:00',
  )
  .transform((text, ctx) => {
    const ms = parseInstant(text);
    if (Number.isNaN(ms) || !realDate(text)) {
      ctx.addIssue({ code: 'custom', message: 'not a valid date and time' });
      return z.NEVER;
    }
    return ms;
  });

const uuid = z.uuid('expected a UUID');
const attempt = z.number().int().min(1);
const metadataObject = z.record(z.string(), z.unknown(), 'expected a JSON object');

export const completedSchema = z.object({
  event_type: z.literal('jobs.completed'),
  job_id: uuid,
  completed_at: instant,
  execution_duration_ms: z.number().int().nullable().optional(),
  result: metadataObject.nullable().optional(),
  attempt: attempt.optional(),
});

export const failedSchema = z.object({
  event_type: z.literal('jobs.failed'),
  job_id: uuid,
  failed_at: instant,
  error_message: z.string(),
  should_retry: z.boolean().default(true),
  attempt: attempt.optional(),
});

export type CompletedReply = z.infer<typeof completedSchema>;
export type FailedReply = z.infer<typeof failedSchema>;
export type Reply = CompletedReply | FailedReply;

export interface CommandLimits {
  maxDelaySeconds: number;
  metadataMaxBytes: number;
}

const MAX_TIMEOUT_SECONDS = 7 * 86_400;

function describe(error: z.ZodError): { reason: string; field?: string } {
  const issue = error.issues[0];
  if (!issue) return { reason: 'invalid body' };
  const field = issue.path.length > 0 ? issue.path.join('.') : undefined;
  return { reason: field ? `${field}: ${issue.message}` : issue.message, ...(field && { field }) };
}

/** Parses JSON, refusing bodies over the size limit unparsed. */
export function parseJson(content: Buffer, maxBytes: number): unknown {
  if (content.length > maxBytes) {
    throw new InvalidMessageError(`body is ${content.length} bytes, over the limit of ${maxBytes}`);
  }
  let body: unknown;
  try {
    body = JSON.parse(content.toString('utf8'));
  } catch (err) {
    throw new InvalidMessageError(`body is not valid JSON: ${(err as Error).message}`);
  }
  checkStorable(body);
  return body;
}

/** True when a string anywhere in `value` (keys included) holds a NUL character. */
function holdsNul(value: unknown): boolean {
  if (typeof value === 'string') return value.includes('\0');
  if (Array.isArray(value)) return value.some(holdsNul);
  if (typeof value === 'object' && value !== null) {
    return Object.entries(value).some(([k, v]) => k.includes('\0') || holdsNul(v));
  }
  return false;
}

/**
 * Refuses a body with a NUL character (`\u0000`) in any string: valid JSON,
 * but PostgreSQL stores it neither in text nor in jsonb, and one such row would
 * fail the write of every job sharing its statement.
 */
export function checkStorable(body: unknown): void {
  if (holdsNul(body)) {
    throw new InvalidMessageError('body holds a NUL character (\\u0000), which cannot be stored');
  }
}

export function check<T>(schema: z.ZodType<T>, body: unknown): T {
  const parsed = schema.safeParse(body);
  if (!parsed.success) {
    const { reason, field } = describe(parsed.error);
    throw new InvalidMessageError(reason, field);
  }
  return parsed.data;
}

/** A reply from the backend, checked against the schema of its routing key. */
export function parseReply(routingKey: string, body: unknown): Reply {
  const eventType = (body as { event_type?: unknown } | null)?.event_type;
  if (typeof body === 'object' && body !== null && eventType !== routingKey) {
    throw new InvalidMessageError(
      `event_type: ${JSON.stringify(eventType)} does not match routing key ${routingKey}`,
      'event_type',
    );
  }
  if (routingKey === 'jobs.completed') return check(completedSchema, body);
  if (routingKey === 'jobs.failed') return check(failedSchema, body);
  throw new InvalidMessageError(`routing key ${routingKey} is not a reply`);
}

/** When a job runs: an instant, a delay from now, or an anchor plus an offset. */
export type Timing =
  | { kind: 'at'; at: number }
  | { kind: 'delay'; seconds: number }
  | { kind: 'anchor'; anchorAt: number; offsetSeconds: number };

export interface ScheduleCommand {
  jobType: JobType;
  timing: Timing;
  metadata: Record<string, unknown>;
  timeoutSeconds?: number;
  maxAttempts?: number;
  minRetryDelaySeconds?: number;
  expiresAt?: number;
  jobId?: string;
  idempotencyKey?: string;
  subject?: string;
}

/** The `jobs.schedule` body (also `POST /jobs`), checked against the limits. */
export function createScheduleSchema(limits: CommandLimits) {
  return z
    .object({
      event_type: z.literal('jobs.schedule').optional(),
      job_type: z.string().refine(isJobType, {
        message: `unknown job type; expected one of ${JOB_TYPE_NAMES.join(', ')}`,
      }),
      scheduled_for: instant.optional(),
      delay_seconds: z.number().min(0).max(limits.maxDelaySeconds).optional(),
      anchor_at: instant.optional(),
      offset_seconds: z
        .number()
        .int()
        .min(-limits.maxDelaySeconds)
        .max(limits.maxDelaySeconds)
        .optional(),
      metadata: metadataObject
        .refine((m) => Buffer.byteLength(JSON.stringify(m)) <= limits.metadataMaxBytes, {
          message: `larger than ${limits.metadataMaxBytes} bytes of JSON`,
        })
        .default({}),
      timeout_seconds: z.number().int().min(1).max(MAX_TIMEOUT_SECONDS).optional(),
      max_attempts: z.number().int().min(1).max(1000).optional(),
      min_retry_delay_seconds: z.number().min(0).max(86_400).optional(),
      expires_at: instant.optional(),
      job_id: uuid.optional(),
      idempotency_key: z.string().min(1).max(255).optional(),
      subject: z.string().min(1).max(255).optional(),
    })
    .superRefine((body, ctx) => {
      const timings = (['scheduled_for', 'delay_seconds', 'anchor_at'] as const).filter(
        (k) => body[k] !== undefined,
      );
      if (timings.length !== 1) {
        ctx.addIssue({
          code: 'custom',
          path: [timings[1] ?? 'scheduled_for'],
          message:
            timings.length === 0
              ? 'one of scheduled_for, delay_seconds or anchor_at is required'
              : `give only one of scheduled_for, delay_seconds and anchor_at, ` +
                `not ${timings.join(' and ')}`,
        });
      }
      if (body.offset_seconds !== undefined && body.anchor_at === undefined) {
        ctx.addIssue({
          code: 'custom',
          path: ['offset_seconds'],
          message: 'offset_seconds needs anchor_at',
        });
      }
    })
    .transform((body): ScheduleCommand => {
      const timing: Timing =
        body.scheduled_for !== undefined
          ? { kind: 'at', at: body.scheduled_for }
          : body.delay_seconds !== undefined
            ? { kind: 'delay', seconds: body.delay_seconds }
            : {
                kind: 'anchor',
                anchorAt: body.anchor_at ?? 0,
                offsetSeconds: body.offset_seconds ?? 0,
              };
      return {
        jobType: body.job_type as JobType,
        timing,
        metadata: body.metadata,
        ...(body.timeout_seconds !== undefined && { timeoutSeconds: body.timeout_seconds }),
        ...(body.max_attempts !== undefined && { maxAttempts: body.max_attempts }),
        ...(body.min_retry_delay_seconds !== undefined && {
          minRetryDelaySeconds: body.min_retry_delay_seconds,
        }),
        ...(body.expires_at !== undefined && { expiresAt: body.expires_at }),
        ...(body.job_id !== undefined && { jobId: body.job_id }),
        ...(body.idempotency_key !== undefined && { idempotencyKey: body.idempotency_key }),
        ...(body.subject !== undefined && { subject: body.subject }),
      };
    });
}

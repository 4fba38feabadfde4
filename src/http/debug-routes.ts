import Router from '@koa/router';
import type { Context } from 'koa';
import type { Logger } from 'pino';
import { z } from 'zod';
import { isJobType } from '../../config/job-types.js';
import {
  JOB_STATES,
  nextWakeAt,
  type JobSnapshot,
  type JobState,
} from '../../machines/job.machine.js';
import type { SchedulerEventBus } from '../events.js';
import { jobView } from '../runtime/job-service.js';
import { JobEntity } from '../store/entities.js';
import {
  findTransitions,
  transitionsAfter,
  type StoredCount,
  type TransitionFilter,
} from '../store/inspector-sql.js';
import { HttpError, requireService, type Services } from './app.js';
import { DEBUG_PAGE_CSP, DEBUG_PAGE_HTML } from './debug-page.js';
import { parseResumePoint, TransitionStreams, viewOfRow, type ResumePoint } from './sse.js';

export interface InspectorOptions {
  services: Services;
  bus: SchedulerEventBus;
  logger: Logger;
  /** Events one stream may have queued before it is disconnected (SSE_MAX_BUFFERED_EVENTS). */
  maxBufferedEvents: number;
  /** Heartbeat of idle streams, in ms (SSE_HEARTBEAT_SECONDS). */
  heartbeatMs: number;
  /** Jobs in the table by state and job type; cached by the caller. */
  storedCounts: () => Promise<{ counts: StoredCount[]; at: number }>;
  /** Wake-ups of the service besides job timers (the next history clean-up), epoch ms. */
  serviceWakeUps?: () => { name: string; at: number | null }[];
  /** Clock in epoch ms; default `Date.now`. */
  now?: () => number;
}

export interface Inspector {
  router: Router;
  streams: TransitionStreams;
}

/** Jobs listed by `GET /debug/jobs` unless `limit` says otherwise, and the most it allows. */
const JOBS_LIMIT = { default: 100, max: 1000 };
/** Wake-ups listed by `GET /debug/jobs`. */
const WAKE_UPS = 10;
/**
 * Transitions returned for one job. A job makes a handful per attempt; only
 * one rescheduled without end could pass this.
 */
const HISTORY_LIMIT = 5000;
/** Values one filter parameter may list. */
const FILTER_VALUES = 100;

const uuid = z.uuid();
const iso = (ms: number | null | undefined) =>
  ms === null || ms === undefined ? null : new Date(ms).toISOString();

/** A query parameter's values: repeated (`?state=a&state=b`) or comma-separated. */
function listParam(ctx: Context, name: string): string[] {
  const raw = ctx.query[name];
  const all = Array.isArray(raw) ? raw : raw === undefined ? [] : [raw];
  const values = all
    .flatMap((v) => v.split(','))
    .map((v) => v.trim())
    .filter((v) => v !== '');
  if (values.length > FILTER_VALUES) {
    throw new HttpError(400, 'invalid_filter', `${name}: at most ${FILTER_VALUES} values`, name);
  }
  return values;
}

function parseFilter(ctx: Context): TransitionFilter {
  const jobIds = listParam(ctx, 'job_id');
  const jobTypes = listParam(ctx, 'job_type');
  const states = listParam(ctx, 'state');
  const refuse = (field: string, message: string) =>
    new HttpError(400, 'invalid_filter', `${field}: ${message}`, field);
  const badId = jobIds.find((id) => !uuid.safeParse(id).success);
  if (badId !== undefined) throw refuse('job_id', `${JSON.stringify(badId)} is not a UUID`);
  const badType = jobTypes.find((t) => !isJobType(t));
  if (badType !== undefined) {
    throw refuse('job_type', `unknown job type ${JSON.stringify(badType)}`);
  }
  const badState = states.find((s) => !(JOB_STATES as readonly string[]).includes(s));
  if (badState !== undefined) throw refuse('state', `unknown state ${JSON.stringify(badState)}`);
  return { jobIds, jobTypes, states };
}

function parseLimit(ctx: Context): number {
  const raw = ctx.query['limit'];
  if (raw === undefined) return JOBS_LIMIT.default;
  const limit = typeof raw === 'string' && /^\d+$/.test(raw) ? Number(raw) : NaN;
  if (!(limit >= 1 && limit <= JOBS_LIMIT.max)) {
    throw new HttpError(400, 'invalid_limit', `limit: expected 1 to ${JOBS_LIMIT.max}`, 'limit');
  }
  return limit;
}

/** The event a live job's current wait will send, for the wake-up list. */
const WAIT_EVENT: Partial<Record<JobState, string>> = {
  pending: 'due',
  'awaiting-ack': 'deadline.passed',
  retrying: 'backoff.elapsed',
};

function liveJob(snapshot: JobSnapshot) {
  const c = snapshot.context;
  const state = snapshot.value as JobState;
  return {
    job_id: c.jobId,
    job_type: c.jobType,
    state,
    attempt: c.attempt,
    max_attempts: c.attemptLimit,
    scheduled_for: iso(c.scheduledFor),
    next_at: iso(nextWakeAt(state, c)),
    expires_at: iso(c.expiresAt),
    subject: c.subject,
    last_error: c.lastError,
  };
}

interface Oldest {
  job_id: string;
  job_type: string;
  due_at: string;
  waiting_ms: number;
}

interface Group {
  count: number;
  oldest: { dueAt: number; jobId: string; jobType: string } | null;
}

function addTo(group: Group, snapshot: JobSnapshot): void {
  const c = snapshot.context;
  group.count += 1;
  if (!group.oldest || c.dueAt < group.oldest.dueAt) {
    group.oldest = { dueAt: c.dueAt, jobId: c.jobId, jobType: c.jobType };
  }
}

function oldestOf(group: Group, now: number): Oldest | null {
  if (!group.oldest) return null;
  const { dueAt, jobId, jobType } = group.oldest;
  return {
    job_id: jobId,
    job_type: jobType,
    due_at: new Date(dueAt).toISOString(),
    waiting_ms: Math.max(0, now - dueAt),
  };
}

/**
 * What the live actors are doing: counts by state and job type with the job
 * due longest ago in each group, the next instants the service wakes up for,
 * and the live jobs (filtered, soonest wake-up first). Finished jobs have no
 * actor; their numbers come from the table (`stored`, cached).
 */
function summarize(snapshots: JobSnapshot[], filter: TransitionFilter, limit: number, now: number) {
  const states = new Map<string, Group & { types: Map<string, Group> }>();
  for (const state of JOB_STATES) states.set(state, { count: 0, oldest: null, types: new Map() });
  const wakeUps: { at: number; snapshot: JobSnapshot }[] = [];
  const listed: JobSnapshot[] = [];

  for (const snapshot of snapshots) {
    const c = snapshot.context;
    const state = snapshot.value as JobState;
    const group = states.get(state);
    if (group) {
      addTo(group, snapshot);
      let byType = group.types.get(c.jobType);
      if (!byType) group.types.set(c.jobType, (byType = { count: 0, oldest: null }));
      addTo(byType, snapshot);
    }
    const at = nextWakeAt(state, c);
    if (at !== null && (wakeUps.length < WAKE_UPS || at < (wakeUps.at(-1)?.at ?? Infinity))) {
      const index = wakeUps.findIndex((w) => w.at > at);
      wakeUps.splice(index === -1 ? wakeUps.length : index, 0, { at, snapshot });
      if (wakeUps.length > WAKE_UPS) wakeUps.pop();
    }
    if (
      (filter.states.length === 0 || filter.states.includes(state)) &&
      (filter.jobTypes.length === 0 || filter.jobTypes.includes(c.jobType)) &&
      (filter.jobIds.length === 0 || filter.jobIds.includes(c.jobId))
    ) {
      listed.push(snapshot);
    }
  }

  // Jobs in flight (no wake-up instant) first, then by the instant they wait for.
  const wake = (s: JobSnapshot) => nextWakeAt(s.value as JobState, s.context) ?? -Infinity;
  listed.sort((a, b) => wake(a) - wake(b));
  return {
    states: [...states].map(([state, g]) => ({
      state,
      count: g.count,
      oldest_waiting: oldestOf(g, now),
      job_types: [...g.types]
        .sort(([a], [b]) => a.localeCompare(b))
        .map(([jobType, t]) => ({
          job_type: jobType,
          count: t.count,
          oldest_waiting: oldestOf(t, now),
        })),
    })),
    wake_ups: wakeUps.map(({ at, snapshot }) => ({
      at: new Date(at).toISOString(),
      in_ms: at - now,
      job_id: snapshot.context.jobId,
      job_type: snapshot.context.jobType,
      state: snapshot.value as string,
      event: WAIT_EVENT[snapshot.value as JobState] ?? null,
    })),
    jobs: listed.slice(0, limit).map(liveJob),
    jobs_total: listed.length,
  };
}

/** A snapshot as JSON: state, status, context and the ids of its running children. */
function snapshotView(snapshot: JobSnapshot) {
  return {
    value: snapshot.value,
    status: snapshot.status,
    context: snapshot.context,
    children: Object.keys(snapshot.children),
  };
}

/**
 * The state inspector: `GET /debug` (the page), `/debug/jobs`,
 * `/debug/jobs/:id` and `/debug/events` (Server-Sent Events). Mounted behind
 * the token rule; `streams.close()` ends the open streams at shutdown.
 */
export function createInspector(options: InspectorOptions): Inspector {
  const { services, logger } = options;
  const now = options.now ?? Date.now;
  const streams = new TransitionStreams({
    bus: options.bus,
    maxBuffered: options.maxBufferedEvents,
    heartbeatMs: options.heartbeatMs,
    logger,
  });
  const router = new Router();

  router.get('/debug', (ctx) => {
    ctx.type = 'text/html; charset=utf-8';
    ctx.set('content-security-policy', DEBUG_PAGE_CSP);
    // The page may carry the token in its address: keep it out of Referer headers.
    ctx.set('referrer-policy', 'no-referrer');
    ctx.set('x-content-type-options', 'nosniff');
    ctx.set('cache-control', 'no-store');
    ctx.body = DEBUG_PAGE_HTML;
  });

  router.get('/debug/jobs', async (ctx) => {
    const filter = parseFilter(ctx);
    const limit = parseLimit(ctx);
    const runtime = requireService(services.runtime);
    const at = now();
    const summary = summarize(runtime.liveSnapshots(), filter, limit, at);

    let stored: { counts: StoredCount[]; at: number } | null = null;
    try {
      if (services.database) stored = await options.storedCounts();
    } catch (err) {
      logger.warn({ err }, 'cannot count stored jobs for the inspector');
    }
    const storedByState = new Map<string, number>();
    for (const c of stored?.counts ?? []) {
      storedByState.set(c.state, (storedByState.get(c.state) ?? 0) + c.count);
    }

    ctx.set('cache-control', 'no-store');
    ctx.body = {
      now: new Date(at).toISOString(),
      live: runtime.size,
      horizon_end: new Date(runtime.horizonEnd()).toISOString(),
      states: summary.states.map((s) => ({
        ...s,
        stored: stored ? (storedByState.get(s.state) ?? 0) : null,
      })),
      stored_counted_at: stored ? new Date(stored.at).toISOString() : null,
      wake_ups: summary.wake_ups,
      service_wake_ups: (options.serviceWakeUps?.() ?? []).map((w) => ({
        name: w.name,
        at: iso(w.at),
      })),
      jobs: summary.jobs,
      jobs_total: summary.jobs_total,
    };
  });

  router.get('/debug/jobs/:id', async (ctx) => {
    const id = ctx.params['id'] ?? '';
    if (!uuid.safeParse(id).success) {
      throw new HttpError(400, 'invalid_job_id', 'job id must be a UUID', 'job_id');
    }
    const database = requireService(services.database);
    const job = await database.orm.em.fork().findOne(JobEntity, { id });
    if (!job) throw new HttpError(404, 'not_found', `job ${id} not found`);
    const rows = await findTransitions(database.pool, database.schema, id, HISTORY_LIMIT + 1);

    const live = services.runtime?.liveSnapshot(id);
    ctx.set('cache-control', 'no-store');
    ctx.body = {
      job: jobView(job),
      live: live !== undefined,
      snapshot: live ? snapshotView(live) : job.snapshot,
      snapshot_source: live ? 'live' : 'stored',
      machine_version: job.machineVersion,
      restore_error: job.restoreError ?? null,
      transitions: rows.slice(0, HISTORY_LIMIT).map(viewOfRow),
      transitions_truncated: rows.length > HISTORY_LIMIT,
    };
  });

  router.get('/debug/events', async (ctx) => {
    const filter = parseFilter(ctx);
    const lastEventId = ctx.get('last-event-id') || ctx.query['last_event_id'];
    let from: ResumePoint | undefined;
    if (lastEventId !== undefined && lastEventId !== '') {
      const parsed = typeof lastEventId === 'string' ? parseResumePoint(lastEventId) : null;
      if (!parsed) {
        throw new HttpError(
          400,
          'invalid_last_event_id',
          'Last-Event-ID: expected the id of an event of this stream',
          'last_event_id',
        );
      }
      from = parsed;
    }
    if (streams.isClosed) throw new HttpError(503, 'stopping', 'the service is stopping');
    const database = from ? requireService(services.database) : undefined;

    // The stream answers by itself from here; Koa must not touch the response.
    ctx.respond = false;
    ctx.status = 200;
    ctx.req.socket.setNoDelay(true);
    await streams.open(
      ctx.res,
      filter,
      database && from
        ? {
            from,
            replay: (after, f, limit) =>
              transitionsAfter(database.pool, database.schema, after, f, limit),
          }
        : undefined,
    );
  });

  return { router, streams };
}

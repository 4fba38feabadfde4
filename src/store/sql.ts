import type pg from 'pg';
import { JOB_MACHINE_VERSION } from '../../machines/job.machine.js';

/**
 * Every hand-written statement of the service. The hot path (job creation,
 * group commit, restore) runs here on the pool with bound parameters;
 * MikroORM serves the rest. `schema` is a checked identifier (config/env.ts).
 */

const WAITING = `('pending', 'dispatched', 'awaiting-ack', 'retrying')`;

/**
 * A row of `jobs` as the pool returns it. Instants come back as PostgreSQL's
 * text (MikroORM sets the pool's type parsers so), not as Date.
 */
export interface JobRow {
  id: string;
  job_type: string;
  state: string;
  attempt: number;
  max_attempts: number;
  scheduled_for: string;
  next_at: string | null;
  expires_at: string | null;
  subject: string | null;
  idempotency_key: string | null;
  metadata: Record<string, unknown>;
  result: unknown;
  last_error: string | null;
  snapshot: Record<string, unknown>;
  machine_version: number;
  version: number;
  outbox: Record<string, unknown> | null;
  restore_error: string | null;
  created_at: string;
  updated_at: string;
  finished_at: string | null;
}

/** The columns a state change writes, derived from the snapshot. Instants are epoch ms. */
export interface JobColumns {
  state: string;
  attempt: number;
  maxAttempts: number;
  scheduledFor: number;
  nextAt: number | null;
  expiresAt: number | null;
  metadata: Record<string, unknown>;
  result: unknown;
  lastError: string | null;
  snapshot: unknown;
  outbox: unknown;
  finishedAt: number | null;
}

export interface TransitionRecord {
  from: string | null;
  to: string;
  event: string;
  attempt: number;
  at: number;
  detail: Record<string, unknown> | null;
}

export interface JobChange {
  id: string;
  /** The row version this change was made against; the write is refused if it moved. */
  version: number;
  columns: JobColumns;
  transitions: TransitionRecord[];
}

/** A job row written by a group commit: its new version and its transitions' ids, in order. */
export interface Committed {
  version: number;
  transitionIds: string[];
}

const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());
const json = (value: unknown) =>
  value === null || value === undefined ? null : JSON.stringify(value);

/**
 * Writes many jobs' changes in one statement: each row is updated only when its
 * version still matches, and its transitions are appended in the same
 * statement. Returns each written row's new version and transition ids; a row
 * missing from the result lost a race and was not written.
 */
export async function commitChanges(
  pool: pg.Pool,
  schema: string,
  changes: JobChange[],
): Promise<Map<string, Committed>> {
  const c = changes.map((x) => x.columns);
  const t = changes.flatMap((x) => x.transitions.map((tr) => ({ id: x.id, ...tr })));
  const { rows } = await pool.query<{ id: string; version: number; transition_ids: string[] }>(
    `with changed as (
       update "${schema}".jobs as j
       set state = c.state,
           attempt = c.attempt,
           max_attempts = c.max_attempts,
           scheduled_for = c.scheduled_for,
           next_at = c.next_at,
           expires_at = c.expires_at,
           metadata = c.metadata,
           result = c.result,
           last_error = c.last_error,
           snapshot = c.snapshot,
           outbox = c.outbox,
           finished_at = c.finished_at,
           machine_version = $15,
           version = j.version + 1,
           updated_at = now()
       from unnest($1::uuid[], $2::int[], $3::text[], $4::int[], $5::int[],
                   $6::timestamptz[], $7::timestamptz[], $8::timestamptz[], $9::jsonb[],
                   $10::jsonb[], $11::text[], $12::jsonb[], $13::jsonb[], $14::timestamptz[])
         as c(id, version, state, attempt, max_attempts,
              scheduled_for, next_at, expires_at, metadata,
              result, last_error, snapshot, outbox, finished_at)
       where j.id = c.id
         and j.version = c.version
       returning j.id, j.version
     ), logged as (
       insert into "${schema}".job_transitions
         (job_id, from_state, to_state, event, attempt, at, detail)
       select t.job_id, t.from_state, t.to_state, t.event, t.attempt, t.at, t.detail
       from unnest($16::uuid[], $17::text[], $18::text[], $19::text[], $20::int[],
                   $21::timestamptz[], $22::jsonb[]) with ordinality
         as t(job_id, from_state, to_state, event, attempt, at, detail, n)
       where t.job_id in (select id from changed)
       order by t.n
       returning id, job_id
     )
     select c.id, c.version,
            coalesce((select array_agg(l.id order by l.id) from logged l where l.job_id = c.id),
                     '{}') as transition_ids
     from changed c`,
    [
      changes.map((x) => x.id),
      changes.map((x) => x.version),
      c.map((x) => x.state),
      c.map((x) => x.attempt),
      c.map((x) => x.maxAttempts),
      c.map((x) => iso(x.scheduledFor)),
      c.map((x) => iso(x.nextAt)),
      c.map((x) => iso(x.expiresAt)),
      c.map((x) => json(x.metadata)),
      c.map((x) => json(x.result)),
      c.map((x) => x.lastError),
      c.map((x) => json(x.snapshot)),
      c.map((x) => json(x.outbox)),
      c.map((x) => iso(x.finishedAt)),
      JOB_MACHINE_VERSION,
      t.map((x) => x.id),
      t.map((x) => x.from),
      t.map((x) => x.to),
      t.map((x) => x.event),
      t.map((x) => x.attempt),
      t.map((x) => iso(x.at)),
      t.map((x) => json(x.detail)),
    ],
  );
  return new Map(
    rows.map((r) => [r.id, { version: r.version, transitionIds: r.transition_ids.map(String) }]),
  );
}

export interface NewJob {
  id: string;
  jobType: string;
  idempotencyKey: string | null;
  subject: string | null;
  columns: JobColumns;
  /** The event that created the job, for its first transition. */
  event: string;
  at: number;
}

/**
 * Inserts a job with its first transition, unless its id or idempotency key is
 * taken: the unique constraints decide, so two creators racing make one row.
 * Returns the new row, or null when it already existed.
 */
export async function insertJob(
  pool: pg.Pool,
  schema: string,
  job: NewJob,
): Promise<(JobRow & { transition_id: string }) | null> {
  const c = job.columns;
  const { rows } = await pool.query<JobRow & { transition_id: string }>(
    `with created as (
       insert into "${schema}".jobs
         (id, job_type, state, attempt, max_attempts, scheduled_for, next_at, expires_at,
          subject, idempotency_key, metadata, snapshot, machine_version, created_at, updated_at)
       values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14)
       on conflict do nothing
       returning *
     ), logged as (
       insert into "${schema}".job_transitions (job_id, from_state, to_state, event, attempt, at)
       select id, null, state, $15, attempt, created_at
       from created
       returning id
     )
     select created.*, (select id from logged) as transition_id
     from created`,
    [
      job.id,
      job.jobType,
      c.state,
      c.attempt,
      c.maxAttempts,
      iso(c.scheduledFor),
      iso(c.nextAt),
      iso(c.expiresAt),
      job.subject,
      job.idempotencyKey,
      json(c.metadata),
      json(c.snapshot),
      JOB_MACHINE_VERSION,
      iso(job.at),
      job.event,
    ],
  );
  return rows[0] ?? null;
}

/** The jobs holding `id` or `idempotencyKey` (at most two rows). */
export async function findByIdOrKey(
  pool: pg.Pool,
  schema: string,
  id: string | null,
  idempotencyKey: string | null,
): Promise<JobRow[]> {
  const { rows } = await pool.query<JobRow>(
    `select *
     from "${schema}".jobs
     where id = $1::uuid
        or idempotency_key = $2`,
    [id, idempotencyKey],
  );
  return rows;
}

export async function findJob(pool: pg.Pool, schema: string, id: string): Promise<JobRow | null> {
  const { rows } = await pool.query<JobRow>(
    `select *
     from "${schema}".jobs
     where id = $1`,
    [id],
  );
  return rows[0] ?? null;
}

/**
 * A page of jobs that wake up in (`after`, `until`], in (`next_at`, `id`) order
 * from `from` on; jobs marked unrestorable are left out.
 */
export async function findWaking(
  pool: pg.Pool,
  schema: string,
  window: { after: number | null; until: number },
  from: { at: string; id: string } | null,
  limit: number,
): Promise<JobRow[]> {
  const { rows } = await pool.query<JobRow>(
    `select *
     from "${schema}".jobs
     where state in ${WAITING}
       and restore_error is null
       and next_at <= $2::timestamptz
       and ($1::timestamptz is null or next_at > $1::timestamptz)
       and ($3::timestamptz is null or (next_at, id) > ($3::timestamptz, $4::uuid))
     order by next_at, id
     limit $5`,
    [iso(window.after), iso(window.until), from?.at ?? null, from?.id ?? null, limit],
  );
  return rows;
}

/** A page of dispatched jobs (to be published again), in id order after `after`. */
export async function findDispatched(
  pool: pg.Pool,
  schema: string,
  after: string | null,
  limit: number,
): Promise<JobRow[]> {
  const { rows } = await pool.query<JobRow>(
    `select *
     from "${schema}".jobs
     where state = 'dispatched'
       and restore_error is null
       and ($1::uuid is null or id > $1::uuid)
     order by id
     limit $2`,
    [after, limit],
  );
  return rows;
}

/** Marks one job as not restorable, with the reason; it stays as it was otherwise. */
export async function markUnrestorable(
  pool: pg.Pool,
  schema: string,
  id: string,
  reason: string,
): Promise<void> {
  await pool.query(
    `update "${schema}".jobs
     set restore_error = $2,
         last_error = $2,
         updated_at = now()
     where id = $1`,
    [id, reason],
  );
}

/**
 * A subject's jobs in the given states, with their anchor offset (null when not
 * timed by anchor); with `anchored`, only those timed by anchor.
 */
export async function findSubjectJobs(
  pool: pg.Pool,
  schema: string,
  subject: string,
  states: readonly string[],
  anchored = false,
): Promise<{ id: string; offsetSeconds: number | null }[]> {
  const { rows } = await pool.query<{ id: string; offset_seconds: number | null }>(
    `select id, (snapshot->'context'->'anchor'->>'offsetSeconds')::float8 as offset_seconds
     from "${schema}".jobs
     where subject = $1
       and state = any($2::text[])
       and ($3::boolean is false or jsonb_typeof(snapshot->'context'->'anchor') = 'object')
     order by scheduled_for, id`,
    [subject, states, anchored],
  );
  return rows.map((r) => ({ id: r.id, offsetSeconds: r.offset_seconds }));
}

/** Takes the unrestorable mark off waiting jobs, so a start tries them again. */
export async function clearUnrestorable(pool: pg.Pool, schema: string): Promise<void> {
  await pool.query(
    `update "${schema}".jobs
     set restore_error = null
     where restore_error is not null
       and state in ${WAITING}`,
  );
}

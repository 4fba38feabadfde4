import type pg from 'pg';

/**
 * Every statement on `schedules`. A tick and a manual trigger are each one
 * conditional update: it matches only the row state its caller decided on
 * (the tick it saw due, the previous run it saw), so of two instances
 * deciding on the same state exactly one changes the row. `schema` is a
 * checked identifier (config/env.ts).
 */

/** Non-final job states: a run in one of them is still in flight. */
export const IN_FLIGHT_STATES = ['pending', 'dispatched', 'awaiting-ack', 'failed', 'retrying'];

/**
 * A row of `schedules`, with the state of its last run's job (null when gone
 * or not created yet). Instants are epoch ms: the pool under MikroORM hands
 * timestamps back as strings.
 */
export interface ScheduleRow {
  name: string;
  job_type: string;
  spec: Record<string, unknown>;
  enabled: boolean;
  allow_overlap: boolean;
  misfire_grace_ms: number;
  paused: boolean;
  next_fire_at: number | null;
  last_fire_at: number | null;
  last_job_id: string | null;
  pending_job_id: string | null;
  pending_fire_at: number | null;
  runs: number;
  missed: number;
  skipped: number;
  updated_at: number;
  last_job_state: string | null;
}

const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());

const ms = (column: string) => `(extract(epoch from s.${column}) * 1000)::float8 as ${column}`;

/** The row with its last run's state; every statement below returns this shape. */
function withLastJob(schema: string, rows: string): string {
  return `select s.name, s.job_type, s.spec, s.enabled, s.allow_overlap, s.misfire_grace_ms,
            s.paused, s.last_job_id, s.pending_job_id, s.runs, s.missed, s.skipped,
            ${['next_fire_at', 'last_fire_at', 'pending_fire_at', 'updated_at'].map(ms).join(', ')},
            j.state as last_job_state
     from ${rows} s
     left join "${schema}".jobs j on j.id = s.last_job_id`;
}

export interface ScheduleDefinitionRow {
  name: string;
  jobType: string;
  /** The timing; a change of it moves `next_fire_at` to `nextFireAt`. */
  spec: Record<string, unknown>;
  enabled: boolean;
  allowOverlap: boolean;
  misfireGraceMs: number;
  /** The first tick after now under `spec`, used for a new row or a changed timing. */
  nextFireAt: number | null;
}

/**
 * Inserts a schedule or updates its definition. The next fire instant is
 * kept when the timing is unchanged (so ticks missed while the service was
 * down are still seen); a new or changed timing starts at `nextFireAt`, and
 * ticks of the old timing are forgotten. Disabled or paused: no next fire.
 */
export async function upsertSchedule(
  pool: pg.Pool,
  schema: string,
  definition: ScheduleDefinitionRow,
): Promise<ScheduleRow> {
  const { rows } = await pool.query<ScheduleRow>(
    `with saved as (
       insert into "${schema}".schedules as s
         (name, job_type, spec, enabled, allow_overlap, misfire_grace_ms, next_fire_at)
       values ($1, $2, $3, $4, $5, $6, case when $4 then $7::timestamptz end)
       on conflict (name) do update
       set job_type = excluded.job_type,
           spec = excluded.spec,
           enabled = excluded.enabled,
           allow_overlap = excluded.allow_overlap,
           misfire_grace_ms = excluded.misfire_grace_ms,
           next_fire_at = case
             when not excluded.enabled or s.paused then null
             when s.spec is distinct from excluded.spec or s.next_fire_at is null
               then excluded.next_fire_at
             else s.next_fire_at
           end,
           updated_at = now()
       returning *
     )
     ${withLastJob(schema, 'saved')}`,
    [
      definition.name,
      definition.jobType,
      JSON.stringify(definition.spec),
      definition.enabled,
      definition.allowOverlap,
      definition.misfireGraceMs,
      iso(definition.nextFireAt),
    ],
  );
  return rows[0] as ScheduleRow;
}

export async function findSchedules(
  pool: pg.Pool,
  schema: string,
  names: string[],
): Promise<ScheduleRow[]> {
  const { rows } = await pool.query<ScheduleRow>(
    `${withLastJob(schema, `"${schema}".schedules`)}
     where s.name = any($1::text[])
     order by s.name`,
    [names],
  );
  return rows;
}

/** What one due tick came to: the run it starts (if any) and what it counts. */
export interface TickClaim {
  name: string;
  /** The `next_fire_at` the decision was made on. */
  due: number;
  /** The `last_job_id` the decision was made on (the overlap check read its state). */
  lastJobId: string | null;
  next: number | null;
  run: { jobId: string; fireAt: number } | null;
  missed: number;
  skipped: number;
}

/**
 * Claims a due tick: moves `next_fire_at` on and records the run and the
 * counts, only if the row is still as the decision saw it. Null when another
 * instance (or a pause, or a trigger) changed it first.
 */
export async function claimTick(
  pool: pg.Pool,
  schema: string,
  claim: TickClaim,
): Promise<ScheduleRow | null> {
  const { rows } = await pool.query<ScheduleRow>(
    `with claimed as (
       update "${schema}".schedules
       set next_fire_at = $3::timestamptz,
           last_fire_at = coalesce($5::timestamptz, last_fire_at),
           last_job_id = coalesce($4::uuid, last_job_id),
           pending_job_id = $4::uuid,
           pending_fire_at = $5::timestamptz,
           runs = runs + case when $4::uuid is null then 0 else 1 end,
           missed = missed + $6,
           skipped = skipped + $7,
           updated_at = now()
       where name = $1
         and next_fire_at = $2::timestamptz
         and last_job_id is not distinct from $8::uuid
         and pending_job_id is null
         and enabled
         and not paused
       returning *
     )
     ${withLastJob(schema, 'claimed')}`,
    [
      claim.name,
      iso(claim.due),
      iso(claim.next),
      claim.run?.jobId ?? null,
      iso(claim.run?.fireAt ?? null),
      claim.missed,
      claim.skipped,
      claim.lastJobId,
    ],
  );
  return rows[0] ?? null;
}

/**
 * Records a manual run at `at`, only if the previous run is still the one the
 * caller checked. Null when a tick or another trigger came first.
 */
export async function claimTrigger(
  pool: pg.Pool,
  schema: string,
  trigger: { name: string; jobId: string; at: number; lastJobId: string | null },
): Promise<ScheduleRow | null> {
  const { rows } = await pool.query<ScheduleRow>(
    `with claimed as (
       update "${schema}".schedules
       set last_job_id = $2::uuid,
           pending_job_id = $2::uuid,
           pending_fire_at = $3::timestamptz,
           last_fire_at = $3::timestamptz,
           runs = runs + 1,
           updated_at = now()
       where name = $1
         and last_job_id is not distinct from $4::uuid
         and pending_job_id is null
       returning *
     )
     ${withLastJob(schema, 'claimed')}`,
    [trigger.name, trigger.jobId, iso(trigger.at), trigger.lastJobId],
  );
  return rows[0] ?? null;
}

/**
 * Forgets a claimed run: once its job exists (`created`), or when it never got
 * its job (a crash between the claim and the creation) and is now past the
 * misfire grace (`missed`), which counts it as missed instead of run.
 */
export async function clearPending(
  pool: pg.Pool,
  schema: string,
  name: string,
  jobId: string,
  outcome: 'created' | 'missed' = 'created',
): Promise<void> {
  await pool.query(
    `update "${schema}".schedules
     set pending_job_id = null,
         pending_fire_at = null,
         runs = runs - case when $3::boolean then 1 else 0 end,
         missed = missed + case when $3::boolean then 1 else 0 end
     where name = $1
       and pending_job_id = $2`,
    [name, jobId, outcome === 'missed'],
  );
}

/** Pauses a schedule: no tick until it is resumed. */
export async function pauseSchedule(
  pool: pg.Pool,
  schema: string,
  name: string,
): Promise<ScheduleRow | null> {
  const { rows } = await pool.query<ScheduleRow>(
    `with paused as (
       update "${schema}".schedules
       set paused = true,
           next_fire_at = null,
           updated_at = case when paused then updated_at else now() end
       where name = $1
       returning *
     )
     ${withLastJob(schema, 'paused')}`,
    [name],
  );
  return rows[0] ?? null;
}

/**
 * Resumes a paused schedule from `nextFireAt` (the first tick after now):
 * ticks that fell in the pause are neither run nor counted. Resuming one that
 * is not paused changes nothing.
 */
export async function resumeSchedule(
  pool: pg.Pool,
  schema: string,
  name: string,
  nextFireAt: number | null,
): Promise<ScheduleRow | null> {
  const { rows } = await pool.query<ScheduleRow>(
    `with resumed as (
       update "${schema}".schedules
       set paused = false,
           next_fire_at = case
             when not paused then next_fire_at
             when enabled then $2::timestamptz
           end,
           updated_at = case when paused then now() else updated_at end
       where name = $1
       returning *
     )
     ${withLastJob(schema, 'resumed')}`,
    [name, iso(nextFireAt)],
  );
  return rows[0] ?? null;
}

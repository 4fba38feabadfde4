import type pg from 'pg';

/**
 * The inspector's reads of `jobs` and `job_transitions`: one job's history,
 * the history after a stream's last event, and counts by state. None of them
 * runs on the hot path. `schema` is a checked identifier (config/env.ts).
 */

/** A row of `job_transitions` with its job's type, as the inspector shows it. */
export interface TransitionRow {
  id: string;
  job_id: string;
  job_type: string;
  from_state: string | null;
  to_state: string;
  event: string;
  attempt: number;
  at: Date;
  detail: Record<string, unknown> | null;
}

/** Narrows a replay; an empty list means no filter on that field. */
export interface TransitionFilter {
  jobIds: string[];
  jobTypes: string[];
  /** Matches the state a transition went to. */
  states: string[];
}

const orNull = (values: string[]) => (values.length > 0 ? values : null);

/** One job's transitions, oldest first, at most `limit` of them. */
export async function findTransitions(
  pool: pg.Pool,
  schema: string,
  jobId: string,
  limit: number,
): Promise<TransitionRow[]> {
  const { rows } = await pool.query<TransitionRow>(
    `select t.id::text as id, t.job_id, j.job_type, t.from_state, t.to_state,
            t.event, t.attempt, t.at, t.detail
     from "${schema}".job_transitions t
     join "${schema}".jobs j on j.id = t.job_id
     where t.job_id = $1
     order by t.id
     limit $2`,
    [jobId, limit],
  );
  return rows;
}

/**
 * Transitions with an id above `afterId` that pass the filter, in id order:
 * what a stream missed since its client's last event.
 */
export async function transitionsAfter(
  pool: pg.Pool,
  schema: string,
  afterId: string,
  filter: TransitionFilter,
  limit: number,
): Promise<TransitionRow[]> {
  const { rows } = await pool.query<TransitionRow>(
    `select t.id::text as id, t.job_id, j.job_type, t.from_state, t.to_state,
            t.event, t.attempt, t.at, t.detail
     from "${schema}".job_transitions t
     join "${schema}".jobs j on j.id = t.job_id
     where t.id > $1::bigint
       and ($2::uuid[] is null or t.job_id = any($2::uuid[]))
       and ($3::text[] is null or j.job_type = any($3::text[]))
       and ($4::text[] is null or t.to_state = any($4::text[]))
     order by t.id
     limit $5`,
    [afterId, orNull(filter.jobIds), orNull(filter.jobTypes), orNull(filter.states), limit],
  );
  return rows;
}

export interface StoredCount {
  state: string;
  job_type: string;
  count: number;
}

/** Jobs in the table by state and job type, finished ones included. */
export async function countJobs(pool: pg.Pool, schema: string): Promise<StoredCount[]> {
  const { rows } = await pool.query<StoredCount>(
    `select state, job_type, count(*)::int as count
     from "${schema}".jobs
     group by state, job_type
     order by state, job_type`,
  );
  return rows;
}

/**
 * Counts from `countJobs`, read at most once per `ttlMs` however often they
 * are asked for: the count reads every row of the table (finished jobs
 * included, up to the retention age), too much for each page refresh or
 * scrape. Concurrent askers share one query.
 */
export function cachedJobCounts(
  read: () => Promise<StoredCount[]>,
  ttlMs: number,
  now: () => number = Date.now,
): () => Promise<{ counts: StoredCount[]; at: number }> {
  let last: { counts: StoredCount[]; at: number } | undefined;
  let reading: Promise<{ counts: StoredCount[]; at: number }> | undefined;
  return () => {
    if (last && now() - last.at < ttlMs) return Promise.resolve(last);
    reading ??= read()
      .then((counts) => (last = { counts, at: now() }))
      .finally(() => (reading = undefined));
    return reading;
  };
}

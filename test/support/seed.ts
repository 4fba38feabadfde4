import { initialTransition, transition } from 'xstate';
import type pg from 'pg';
import { jobMachine, type JobSnapshot } from '../../machines/job.machine.js';
import { columnsOf } from '../../src/runtime/job-columns.js';

/**
 * Inserts `count` jobs in one statement, each a copy of a snapshot the machine
 * itself made (pending, or dispatched with attempt 1), due at `dueAt` plus
 * `stepMs` per job.
 */
export async function seedJobs(
  pool: pg.Pool,
  schema: string,
  options: { count: number; state: 'pending' | 'dispatched'; dueAt: number; stepMs?: number },
): Promise<void> {
  let [snapshot]: [JobSnapshot, unknown] = initialTransition(jobMachine, {
    jobId: '00000000-0000-4000-8000-000000000000',
    jobType: 'file_cleanup',
    scheduledFor: options.dueAt,
    expiresAt: null,
    timeoutSeconds: 60,
    maxAttempts: 3,
    minRetryDelayMs: 1000,
    maxRetryDelayMs: 60_000,
    publishRetryDelayMs: 200,
    metadata: {},
    subject: null,
    anchor: null,
  });
  if (options.state === 'dispatched') {
    [snapshot] = transition(jobMachine, snapshot, { type: 'due', at: options.dueAt, jitter: 0 });
  }
  const columns = columnsOf(snapshot);
  await pool.query(
    `insert into "${schema}".jobs
       (id, job_type, state, attempt, max_attempts, scheduled_for, next_at,
        metadata, snapshot, machine_version, outbox)
     select g.id, 'file_cleanup', $4, $5, 3, g.due,
            case when $4 = 'pending' then g.due end, '{}',
            jsonb_set(jsonb_set(jsonb_set($1::jsonb,
              '{context,jobId}', to_jsonb(g.id::text)),
              '{context,dueAt}', to_jsonb((extract(epoch from g.due) * 1000)::bigint)),
              '{context,scheduledFor}', to_jsonb((extract(epoch from g.due) * 1000)::bigint)),
            1, $6::jsonb
     from (select gen_random_uuid() as id,
                  to_timestamp(($2::bigint + (i - 1) * $7::bigint) / 1000.0) as due
           from generate_series(1, $3::int) as i) as g`,
    [
      JSON.stringify(columns.snapshot),
      options.dueAt,
      options.count,
      options.state,
      columns.attempt,
      columns.outbox === null ? null : JSON.stringify(columns.outbox),
      options.stepMs ?? 0,
    ],
  );
}

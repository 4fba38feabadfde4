import { defineEntity, p, type InferEntity } from '@mikro-orm/core';

/**
 * A job instance: its persisted actor snapshot and the columns derived from it
 * for queries. Written on the hot path by the group commit in `sql.ts`; read
 * and administered through MikroORM.
 */
export const JobEntity = defineEntity({
  name: 'Job',
  tableName: 'jobs',
  properties: {
    id: p.uuid().primary(),
    jobType: p.text(),
    state: p.text(),
    attempt: p.integer(),
    maxAttempts: p.integer(),
    scheduledFor: p.datetime(),
    nextAt: p.datetime().nullable(),
    expiresAt: p.datetime().nullable(),
    subject: p.text().nullable(),
    idempotencyKey: p.text().nullable(),
    metadata: p.json<Record<string, unknown>>(),
    result: p.json<unknown>().nullable(),
    lastError: p.text().nullable(),
    snapshot: p.json<Record<string, unknown>>(),
    machineVersion: p.integer(),
    version: p.integer(),
    outbox: p.json<Record<string, unknown>>().nullable(),
    restoreError: p.text().nullable(),
    createdAt: p.datetime(),
    updatedAt: p.datetime(),
    finishedAt: p.datetime().nullable(),
  },
});
export type Job = InferEntity<typeof JobEntity>;

/** One transition of one job; append-only. */
export const JobTransitionEntity = defineEntity({
  name: 'JobTransition',
  tableName: 'job_transitions',
  properties: {
    id: p.bigint('string').primary().autoincrement(),
    jobId: p.uuid(),
    fromState: p.text().nullable(),
    toState: p.text(),
    event: p.text(),
    attempt: p.integer(),
    at: p.datetime(),
    detail: p.json<Record<string, unknown>>().nullable(),
  },
});
export type JobTransition = InferEntity<typeof JobTransitionEntity>;

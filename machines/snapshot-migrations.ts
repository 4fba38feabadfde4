import {
  JOB_MACHINE_VERSION,
  JOB_STATES,
  withTimerFromContext,
  type JobState,
} from './job.machine.js';

/** A persisted snapshot that cannot be brought to the current machine version. */
export class SnapshotMigrationError extends Error {
  override readonly name = 'SnapshotMigrationError';
}

type PersistedSnapshot = Record<string, unknown>;

/**
 * One step per machine version: `steps[n]` turns a version-n snapshot into a
 * version n+1 snapshot. Version 1 is the first, so there is no step yet; the
 * next change of states or context adds `steps[1]` here, never edits one.
 */
const steps: Record<number, (snapshot: PersistedSnapshot) => PersistedSnapshot> = {};

/** Context fields a restorable snapshot of the current version must carry. */
const REQUIRED_CONTEXT = [
  'jobId',
  'jobType',
  'dueAt',
  'attempt',
  'attemptLimit',
  'timeoutSeconds',
  'minRetryDelayMs',
  'maxRetryDelayMs',
] as const;

/**
 * Brings a persisted snapshot made by machine `version` to the current version
 * and checks it can be restored. Throws `SnapshotMigrationError` naming what is
 * wrong; the caller marks that one job and goes on with the others.
 */
export function migrateSnapshot(snapshot: unknown, version: number): PersistedSnapshot {
  if (typeof snapshot !== 'object' || snapshot === null) {
    throw new SnapshotMigrationError('snapshot is not an object');
  }
  if (!Number.isInteger(version) || version < 1 || version > JOB_MACHINE_VERSION) {
    throw new SnapshotMigrationError(
      `snapshot was made by job machine version ${version}; ` +
        `this service runs version ${JOB_MACHINE_VERSION} and has no migration from it`,
    );
  }
  let current = snapshot as PersistedSnapshot;
  for (let from = version; from < JOB_MACHINE_VERSION; from += 1) {
    const step = steps[from];
    if (!step) {
      throw new SnapshotMigrationError(`no migration from job machine version ${from}`);
    }
    current = step(current);
  }
  return checkRestorable(current);
}

function checkRestorable(snapshot: PersistedSnapshot): PersistedSnapshot {
  const value = snapshot['value'];
  if (typeof value !== 'string' || !JOB_STATES.includes(value as JobState)) {
    throw new SnapshotMigrationError(`snapshot names unknown state ${JSON.stringify(value)}`);
  }
  const context = snapshot['context'];
  if (typeof context !== 'object' || context === null) {
    throw new SnapshotMigrationError('snapshot has no context');
  }
  for (const field of REQUIRED_CONTEXT) {
    if (!(field in context)) {
      throw new SnapshotMigrationError(`snapshot context lacks ${field}`);
    }
  }
  return withTimerFromContext(snapshot as PersistedSnapshot & { value: string; context: object });
}

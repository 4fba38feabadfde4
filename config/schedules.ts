import type { JobType } from './job-types.js';

/** A periodic job: one instance of `jobType` every `everyMs`, on multiples of it since the epoch. */
export interface ScheduleDefinition {
  name: string;
  jobType: JobType;
  everyMs: number;
}

/**
 * The periodic schedules, from the environment. Throws `ConfigError` naming a
 * bad variable.
 */
export function loadScheduleDefinitions(
  _env: Record<string, string | undefined>,
  base: { mfaExpiryIntervalMinutes: number; misfireGraceSeconds: number },
): ScheduleDefinition[] {
  return [
    {
      name: 'mfa_expiry_cleanup',
      jobType: 'mfa_expiry_cleanup',
      everyMs: Math.round(base.mfaExpiryIntervalMinutes * 60_000),
    },
  ];
}

import type { Config } from './env.js';
import type { JobType } from './job-types.js';

/** A periodic job: one instance of `jobType` every `everyMs`, on multiples of it since the epoch. */
export interface ScheduleDefinition {
  name: string;
  jobType: JobType;
  everyMs: number;
}

export function scheduleDefinitions(config: Config): ScheduleDefinition[] {
  return [
    {
      name: 'mfa_expiry_cleanup',
      jobType: 'mfa_expiry_cleanup',
      everyMs: Math.round(config.schedules.mfaExpiryIntervalMinutes * 60_000),
    },
  ];
}

import type { Config, JobCategoryDefaults } from './env.js';

/** Job types the backend knows, by category; each category has its own defaults. */
export const JOB_TYPES = {
  mfa_expiry_cleanup: 'cleanup',
  file_cleanup: 'cleanup',
  registration_expiry_cleanup: 'cleanup',
  relationship_consistency_check: 'cleanup',
  lesson_reminder: 'reminder',
  homework_reminder: 'reminder',
  payment_reminder: 'reminder',
  telegram_link_reminder: 'reminder',
} as const;

export type JobType = keyof typeof JOB_TYPES;
export type JobCategory = (typeof JOB_TYPES)[JobType];

export const JOB_TYPE_NAMES = Object.keys(JOB_TYPES) as JobType[];

export function isJobType(value: string): value is JobType {
  return Object.hasOwn(JOB_TYPES, value);
}

export function categoryDefaults(config: Config, jobType: JobType): JobCategoryDefaults {
  return config.jobs[JOB_TYPES[jobType]];
}

import { Cron } from 'croner';
import { ConfigError } from './errors.js';
import type { JobType } from './job-types.js';

/** What a cron time that the zone skips (spring forward) does: nothing, or run shifted. */
export type GapPolicy = 'skip' | 'shift';
/** Which of the two instants of a local time the zone repeats (fall back) runs. */
export type FoldPolicy = 'first' | 'last' | 'both';

export const GAP_POLICIES: readonly GapPolicy[] = ['skip', 'shift'];
export const FOLD_POLICIES: readonly FoldPolicy[] = ['first', 'last', 'both'];

/**
 * When a schedule ticks. An interval ticks on multiples of `everyMs` since the
 * epoch, whatever the zone. A cron expression (5 fields, or 6 with seconds
 * first) is read as wall-clock time in `timezone`, with an explicit policy for
 * the local times a daylight-saving change skips or repeats.
 */
export type ScheduleTiming =
  | { kind: 'interval'; everyMs: number }
  | { kind: 'cron'; cron: string; timezone: string; gap: GapPolicy; fold: FoldPolicy };

/** A periodic schedule: each tick creates one job of `jobType` with its category's defaults. */
export interface ScheduleDefinition {
  /** Unique; the schedule's row in `schedules` and its URL. */
  name: string;
  jobType: JobType;
  /** A disabled schedule keeps its row (and counters) but never ticks. */
  enabled: boolean;
  timing: ScheduleTiming;
  /** Whether a tick may start a run while the previous run is still in flight. */
  allowOverlap: boolean;
  /** A tick this late (ms) still runs; a later one is counted as missed. */
  misfireGraceMs: number;
}

/** The shape croner accepts here: minute-level (5 fields) or second-level (6 fields). */
export const CRON_MODE = '5-or-6-parts';

/** Parses a cron expression read as a floating wall clock (no zone: UTC fields). */
export function parseCron(expression: string): Cron {
  return new Cron(expression, { utcOffset: 0, mode: CRON_MODE });
}

/**
 * True for a zone name the runtime's time-zone data knows. Offsets such as
 * `+02:00` are refused: they have no daylight-saving rules, so an interval or
 * `UTC` says the same more plainly.
 */
export function isIanaZone(zone: string): boolean {
  if (!/^[A-Za-z][A-Za-z0-9_+\-]*(\/[A-Za-z0-9_+\-]+)*$/.test(zone)) return false;
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: zone });
    return true;
  } catch {
    return false;
  }
}

/** The cleanup job types, each with its variables' prefix and its default timing. */
const CLEANUP_SCHEDULES: { jobType: JobType; prefix: string; defaultCron?: string }[] = [
  // Every MFA_EXPIRY_JOB_INTERVAL_MINUTES (default 60), as the earlier service ran it.
  { jobType: 'mfa_expiry_cleanup', prefix: 'MFA_EXPIRY_JOB' },
  // Daily, in the quiet hours of the night, spread so they do not start together.
  { jobType: 'file_cleanup', prefix: 'FILE_CLEANUP_JOB', defaultCron: '0 3 * * *' },
  {
    jobType: 'registration_expiry_cleanup',
    prefix: 'REGISTRATION_EXPIRY_JOB',
    defaultCron: '30 3 * * *',
  },
  {
    jobType: 'relationship_consistency_check',
    prefix: 'RELATIONSHIP_CONSISTENCY_JOB',
    defaultCron: '0 4 * * *',
  },
];

const MAX_INTERVAL_MINUTES = 7 * 24 * 60;
const MAX_GRACE_SECONDS = 7 * 86_400;
const FLAGS: Record<string, boolean> = {
  true: true,
  '1': true,
  yes: true,
  on: true,
  false: false,
  '0': false,
  no: false,
  off: false,
};

/** Collects every bad variable, so one start-up names them all. */
class Reader {
  readonly problems: string[] = [];

  constructor(private readonly env: Record<string, string | undefined>) {}

  raw(variable: string): string | undefined {
    const value = this.env[variable]?.trim();
    return value === undefined || value === '' ? undefined : value;
  }

  private bad(variable: string, message: string): undefined {
    this.problems.push(`${variable}: ${message} (got ${JSON.stringify(this.env[variable])})`);
    return undefined;
  }

  flag(variable: string, fallback: boolean): boolean {
    const value = this.raw(variable);
    if (value === undefined) return fallback;
    const parsed = FLAGS[value.toLowerCase()];
    return parsed ?? this.bad(variable, 'expected true or false') ?? fallback;
  }

  number(variable: string, min: number, max: number): number | undefined {
    const value = this.raw(variable);
    if (value === undefined) return undefined;
    if (!/^\d+(\.\d+)?$/.test(value)) return this.bad(variable, 'expected a number');
    const parsed = Number(value);
    if (parsed < min || parsed > max) {
      return this.bad(variable, `expected a number from ${min} to ${max}`);
    }
    return parsed;
  }

  oneOf<T extends string>(variable: string, allowed: readonly T[], fallback: T): T {
    const value = this.raw(variable)?.toLowerCase();
    if (value === undefined) return fallback;
    if ((allowed as readonly string[]).includes(value)) return value as T;
    return this.bad(variable, `expected one of ${allowed.join(', ')}`) ?? fallback;
  }

  zone(variable: string, fallback: string): string {
    const value = this.raw(variable);
    if (value === undefined) return fallback;
    if (isIanaZone(value)) return value;
    return this.bad(variable, 'expected an IANA time zone such as Europe/Berlin') ?? fallback;
  }

  cron(variable: string, expression: string): void {
    let cron: Cron;
    try {
      cron = parseCron(expression);
    } catch (err) {
      this.bad(variable, (err as Error).message);
      return;
    }
    if (cron.nextRun() === null) this.bad(variable, 'the expression never matches');
  }
}

/**
 * The periodic schedules, one per cleanup job type, from the environment.
 * For a prefix P (`MFA_EXPIRY_JOB`, `FILE_CLEANUP_JOB`,
 * `REGISTRATION_EXPIRY_JOB`, `RELATIONSHIP_CONSISTENCY_JOB`):
 * `P_ENABLED` (default true); `P_INTERVAL_MINUTES` or `P_CRON`, not both;
 * `P_TIMEZONE` (default `SCHEDULE_TIMEZONE`, itself default `UTC`);
 * `P_DST_GAP` skip|shift (default shift) and `P_DST_FOLD` first|last|both
 * (default first); `P_ALLOW_OVERLAP` (default false);
 * `P_MISFIRE_GRACE_SECONDS` (default the global misfire grace).
 * Throws `ConfigError` naming every bad variable.
 */
export function loadScheduleDefinitions(
  env: Record<string, string | undefined>,
  base: { mfaExpiryIntervalMinutes: number; misfireGraceSeconds: number },
): ScheduleDefinition[] {
  const read = new Reader(env);
  const defaultZone = read.zone('SCHEDULE_TIMEZONE', 'UTC');

  const definitions = CLEANUP_SCHEDULES.map(({ jobType, prefix, defaultCron }) => {
    const intervalVariable = `${prefix}_INTERVAL_MINUTES`;
    const cronVariable = `${prefix}_CRON`;
    const cronText = read.raw(cronVariable);
    const intervalSet = read.raw(intervalVariable) !== undefined;
    if (cronText !== undefined && intervalSet) {
      read.problems.push(`${cronVariable}: set either it or ${intervalVariable}, not both`);
    }
    // The MFA interval is parsed (with its default) in env.ts, under its old name.
    const minutes =
      jobType === 'mfa_expiry_cleanup'
        ? base.mfaExpiryIntervalMinutes
        : read.number(intervalVariable, 0.01, MAX_INTERVAL_MINUTES);

    let timing: ScheduleTiming;
    const cron = cronText ?? (intervalSet ? undefined : defaultCron);
    if (cron !== undefined) {
      if (cronText !== undefined) read.cron(cronVariable, cronText);
      timing = {
        kind: 'cron',
        cron,
        timezone: read.zone(`${prefix}_TIMEZONE`, defaultZone),
        gap: read.oneOf(`${prefix}_DST_GAP`, GAP_POLICIES, 'shift'),
        fold: read.oneOf(`${prefix}_DST_FOLD`, FOLD_POLICIES, 'first'),
      };
    } else {
      // `minutes` is missing only when its variable was bad, which throws below.
      timing = { kind: 'interval', everyMs: Math.round((minutes ?? 0) * 60_000) };
    }
    const grace = read.number(`${prefix}_MISFIRE_GRACE_SECONDS`, 0, MAX_GRACE_SECONDS);
    return {
      name: jobType,
      jobType,
      enabled: read.flag(`${prefix}_ENABLED`, true),
      timing,
      allowOverlap: read.flag(`${prefix}_ALLOW_OVERLAP`, false),
      misfireGraceMs: Math.round((grace ?? base.misfireGraceSeconds) * 1000),
    };
  });

  if (read.problems.length > 0) {
    throw new ConfigError(`Invalid environment: ${read.problems.join('; ')}`);
  }
  return definitions;
}

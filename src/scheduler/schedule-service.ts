import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import type { Logger } from 'pino';
import type { Subscription } from 'rxjs';
import type { ScheduleDefinition, ScheduleTiming } from '../../config/schedules.js';
import { RequestRefused, type JobService } from '../runtime/job-service.js';
import {
  IN_FLIGHT_STATES,
  claimTick,
  claimTrigger,
  clearPending,
  findSchedules,
  pauseSchedule,
  resumeSchedule,
  upsertSchedule,
  type ScheduleRow,
} from '../store/schedule-sql.js';
import { timerAt } from '../time/timer.js';
import { fireTimes, type FireTimes } from './fire-times.js';
import { decideTick, MIN_GRACE_MS, tickJobId, type TickDecision } from './periodic.js';
import { localIso } from './zone.js';

export interface ScheduleServiceOptions {
  definitions: ScheduleDefinition[];
  jobs: Pick<JobService, 'schedule'>;
  pool: pg.Pool;
  schema: string;
  logger: Logger;
  /** Clock in epoch ms; default `Date.now`. */
  now?: () => number;
  /**
   * How often every row is read again, in ms (default 30,000): picks up a
   * resume made on another instance and a run whose job creation failed.
   */
  syncIntervalMs?: number;
}

/** An instant (epoch ms) as ISO 8601 in UTC, or null. */
const iso = (at: number | null) => (at === null ? null : new Date(at).toISOString());

/** A schedule as GET /schedules shows it, snake_case like the job view. */
export type ScheduleView = ReturnType<typeof scheduleView>;

/** Wait before looking at a schedule again after its tick failed (database away). */
const RETRY_MS = 5000;
/** Rounds of read-decide-claim before giving up on a schedule that keeps changing. */
const CLAIM_ROUNDS = 5;

interface Schedule {
  definition: ScheduleDefinition;
  times: FireTimes;
}

/**
 * Turns periodic schedules into jobs. Each schedule's row holds the next tick;
 * an instance waits for it, decides what the tick comes to (run, missed,
 * skipped) and claims it with one conditional update, so exactly one instance
 * acts on each tick; the run's job has an id derived from the tick, so a
 * crash between the claim and the job's creation is repaired by whoever looks
 * next. Also the edge that pauses, resumes and triggers schedules.
 */
export class ScheduleService {
  private readonly schedules = new Map<string, Schedule>();
  private readonly waits = new Map<string, { at: number; subscription: Subscription }>();
  private readonly chains = new Map<string, Promise<void>>();
  private readonly now: () => number;
  private syncTimer: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(private readonly options: ScheduleServiceOptions) {
    this.now = options.now ?? Date.now;
    for (const definition of options.definitions) {
      this.schedules.set(definition.name, { definition, times: fireTimes(definition.timing) });
    }
  }

  /**
   * Writes the definitions to their rows, acts on ticks that came due while
   * the service was down, and starts waiting for the next ones.
   */
  async start(): Promise<void> {
    const now = this.now();
    for (const { definition, times } of this.schedules.values()) {
      const row = await upsertSchedule(this.options.pool, this.options.schema, {
        name: definition.name,
        jobType: definition.jobType,
        spec: timingSpec(definition.timing),
        enabled: definition.enabled,
        allowOverlap: definition.allowOverlap,
        misfireGraceMs: definition.misfireGraceMs,
        nextFireAt: times.next(now),
      });
      this.options.logger.info(
        {
          schedule: definition.name,
          enabled: row.enabled,
          paused: row.paused,
          next_fire_at: iso(row.next_fire_at),
        },
        'schedule loaded',
      );
    }
    await this.syncAll();
    this.keepSyncing();
  }

  private keepSyncing(): void {
    if (this.stopped) return;
    this.syncTimer = setTimeout(() => {
      void this.syncAll().finally(() => this.keepSyncing());
    }, this.options.syncIntervalMs ?? 30_000);
  }

  private async syncAll(): Promise<void> {
    await Promise.all([...this.schedules.keys()].map((name) => this.check(name)));
  }

  /**
   * Looks at one schedule now: creates a claimed run's missing job, acts on a
   * due tick, and waits for the next. Runs one at a time per schedule.
   */
  check(name: string): Promise<void> {
    return this.serial(name, async () => {
      try {
        await this.process(name);
      } catch (err) {
        this.options.logger.error({ err, schedule: name }, 'schedule tick failed; retrying');
        this.arm(name, this.now() + RETRY_MS);
      }
    });
  }

  private serial<T>(name: string, work: () => Promise<T>): Promise<T> {
    const previous = this.chains.get(name) ?? Promise.resolve();
    const run = previous.then(work);
    this.chains.set(
      name,
      run.then(
        () => {},
        () => {},
      ),
    );
    return run;
  }

  private async process(name: string): Promise<void> {
    const schedule = this.schedules.get(name);
    if (!schedule) return;
    const { definition, times } = schedule;
    for (let round = 0; round < CLAIM_ROUNDS && !this.stopped; round += 1) {
      const row = await this.read(name);
      if (!row) return;
      if (row.pending_job_id) {
        await this.createRun(row);
        continue;
      }
      if (!row.enabled || row.paused || row.next_fire_at === null) {
        this.disarm(name);
        return;
      }
      const due = row.next_fire_at;
      const now = this.now();
      if (due > now) {
        this.arm(name, due);
        return;
      }

      const decision = decideTick({
        times,
        due,
        now,
        graceMs: definition.misfireGraceMs,
        inFlight: inFlight(row),
        allowOverlap: definition.allowOverlap,
      });
      const run =
        decision.fireAt === null
          ? null
          : { jobId: tickJobId(name, decision.fireAt), fireAt: decision.fireAt };
      const claimed = await claimTick(this.options.pool, this.options.schema, {
        name,
        due,
        lastJobId: row.last_job_id,
        next: decision.next,
        run,
        missed: decision.missed,
        skipped: decision.skipped,
      });
      if (!claimed) continue; // another instance, a pause or a trigger came first

      this.report(row, decision, now);
      if (claimed.pending_job_id) await this.createRun(claimed);
      if (decision.next !== null) this.arm(name, decision.next);
      return;
    }
    if (!this.stopped) this.arm(name, this.now() + RETRY_MS);
  }

  /** One log line per decided tick; `missed` counts the older ticks a late run stood in for. */
  private report(row: ScheduleRow, decision: TickDecision, now: number): void {
    const log = this.options.logger.child({ schedule: row.name });
    const fields = { missed: decision.missed, next_fire_at: iso(decision.next) };
    if (decision.fireAt !== null) {
      log.info(
        { ...fields, tick: iso(decision.fireAt), late_ms: now - decision.fireAt },
        'schedule ticked',
      );
    } else if (decision.skipped > 0) {
      log.warn(
        { ...fields, previous_job_id: row.last_job_id, previous_state: row.last_job_state },
        'schedule tick skipped: the previous run is still in flight',
      );
    } else {
      log.warn(
        { ...fields, since: iso(row.next_fire_at) },
        'schedule ticks missed: later than the misfire grace',
      );
    }
  }

  /** Creates the job of a claimed run (its id is fixed, so twice is harmless), then forgets it. */
  private async createRun(row: ScheduleRow): Promise<string> {
    const jobId = row.pending_job_id;
    const at = row.pending_fire_at;
    const schedule = this.schedules.get(row.name);
    if (!jobId || at === null || !schedule) throw new Error(`no run to create: ${row.name}`);
    const byTick = jobId === tickJobId(row.name, at);
    const graceMs = Math.max(schedule.definition.misfireGraceMs, MIN_GRACE_MS);
    if (byTick && this.now() - at > graceMs) {
      await clearPending(this.options.pool, this.options.schema, row.name, jobId, 'missed');
      this.options.logger.warn(
        { schedule: row.name, tick: iso(at) },
        'claimed tick never got its job and is past the misfire grace; counted missed',
      );
      return jobId;
    }
    await this.options.jobs.schedule(
      {
        jobType: schedule.definition.jobType,
        timing: { kind: 'at', at },
        metadata: {},
        jobId,
        subject: `schedule:${row.name}`,
      },
      byTick ? 'schedule.tick' : 'schedule.trigger',
    );
    await clearPending(this.options.pool, this.options.schema, row.name, jobId);
    return jobId;
  }

  private arm(name: string, at: number): void {
    if (this.stopped || this.waits.get(name)?.at === at) return;
    this.disarm(name);
    const subscription = timerAt(at, { now: this.now }).subscribe(() => {
      if (this.waits.get(name)?.subscription === subscription) this.waits.delete(name);
      void this.check(name);
    });
    this.waits.set(name, { at, subscription });
  }

  private disarm(name: string): void {
    this.waits.get(name)?.subscription.unsubscribe();
    this.waits.delete(name);
  }

  private async read(name: string): Promise<ScheduleRow | undefined> {
    return (await findSchedules(this.options.pool, this.options.schema, [name]))[0];
  }

  private require(name: string): Schedule {
    const schedule = this.schedules.get(name);
    if (!schedule) throw new RequestRefused('not_found', `schedule ${name} not found`);
    return schedule;
  }

  /** Every schedule with its last and next fire and the next `previewCount` fire instants. */
  async list(previewCount = 5): Promise<ScheduleView[]> {
    const rows = await findSchedules(this.options.pool, this.options.schema, [
      ...this.schedules.keys(),
    ]);
    const byName = new Map(rows.map((row) => [row.name, row]));
    const views: ScheduleView[] = [];
    for (const schedule of this.schedules.values()) {
      const row = byName.get(schedule.definition.name);
      if (row) views.push(this.view(schedule, row, previewCount));
    }
    return views;
  }

  async get(name: string, previewCount = 5): Promise<ScheduleView> {
    const schedule = this.require(name);
    const row = await this.read(name);
    if (!row) throw new RequestRefused('not_found', `schedule ${name} not found`);
    return this.view(schedule, row, previewCount);
  }

  /** Stops ticking until resumed; a run in flight goes on. Pausing twice is fine. */
  async pause(name: string): Promise<ScheduleView> {
    const schedule = this.require(name);
    return this.serial(name, async () => {
      const row = await pauseSchedule(this.options.pool, this.options.schema, name);
      if (!row) throw new RequestRefused('not_found', `schedule ${name} not found`);
      this.disarm(name);
      this.options.logger.info({ schedule: name }, 'schedule paused');
      return this.view(schedule, row, 5);
    });
  }

  /** Ticks again from the first tick after now; ticks during the pause are not run. */
  async resume(name: string): Promise<ScheduleView> {
    const schedule = this.require(name);
    const row = await this.serial(name, async () => {
      const next = schedule.times.next(this.now());
      const resumed = await resumeSchedule(this.options.pool, this.options.schema, name, next);
      if (!resumed) throw new RequestRefused('not_found', `schedule ${name} not found`);
      this.options.logger.info(
        { schedule: name, next_fire_at: iso(resumed.next_fire_at) },
        'schedule resumed',
      );
      return resumed;
    });
    void this.check(name);
    return this.view(schedule, row, 5);
  }

  /**
   * Starts a run now, paused, disabled or not; the next tick stays as it was.
   * Refused while the previous run is in flight, unless the schedule allows
   * overlap, just as a tick would be skipped.
   */
  async trigger(name: string): Promise<{ jobId: string; schedule: ScheduleView }> {
    const schedule = this.require(name);
    return this.serial(name, async () => {
      for (let round = 0; round < CLAIM_ROUNDS; round += 1) {
        const row = await this.read(name);
        if (!row) throw new RequestRefused('not_found', `schedule ${name} not found`);
        if (row.pending_job_id) {
          await this.createRun(row);
          continue;
        }
        if (!schedule.definition.allowOverlap && inFlight(row)) {
          throw new RequestRefused(
            'conflict',
            `schedule ${name}: the previous run ${row.last_job_id} is still ` +
              `${row.last_job_state}, and the schedule does not allow overlap`,
          );
        }
        const claimed = await claimTrigger(this.options.pool, this.options.schema, {
          name,
          jobId: randomUUID(),
          at: this.now(),
          lastJobId: row.last_job_id,
        });
        if (!claimed) continue;
        const jobId = await this.createRun(claimed);
        this.options.logger.info({ schedule: name, job_id: jobId }, 'schedule triggered');
        const after = (await this.read(name)) ?? claimed;
        return { jobId, schedule: this.view(schedule, after, 5) };
      }
      throw new RequestRefused('conflict', `schedule ${name} keeps changing; try again`);
    });
  }

  private view(schedule: Schedule, row: ScheduleRow, previewCount: number) {
    return scheduleView(schedule.definition, schedule.times, row, previewCount, this.now());
  }

  /** Stops waiting and lets a tick being handled finish. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.syncTimer);
    for (const name of [...this.waits.keys()]) this.disarm(name);
    await Promise.allSettled([...this.chains.values()]);
  }
}

/** True when the schedule's last run has not finished (or its job is not created yet). */
function inFlight(row: ScheduleRow): boolean {
  if (row.last_job_id === null) return false;
  if (row.pending_job_id === row.last_job_id) return true;
  return row.last_job_state !== null && IN_FLIGHT_STATES.includes(row.last_job_state);
}

/** The timing as stored in the row's `spec`; a change of it restarts the ticks. */
export function timingSpec(timing: ScheduleTiming): Record<string, unknown> {
  return timing.kind === 'interval'
    ? { kind: 'interval', every_ms: timing.everyMs }
    : {
        kind: 'cron',
        cron: timing.cron,
        timezone: timing.timezone,
        dst_gap: timing.gap,
        dst_fold: timing.fold,
      };
}

function scheduleView(
  definition: ScheduleDefinition,
  times: FireTimes,
  row: ScheduleRow,
  previewCount: number,
  now: number,
) {
  const timing = definition.timing;
  const zone = timing.kind === 'cron' ? timing.timezone : 'UTC';
  const preview: { at: string; local: string }[] = [];
  let at = row.next_fire_at ?? times.next(now);
  while (at !== null && preview.length < previewCount) {
    preview.push({ at: new Date(at).toISOString(), local: localIso(zone, at) });
    at = times.next(at);
  }
  return {
    name: definition.name,
    job_type: definition.jobType,
    enabled: row.enabled,
    paused: row.paused,
    timing:
      timing.kind === 'interval'
        ? { kind: 'interval' as const, every_seconds: timing.everyMs / 1000 }
        : {
            kind: 'cron' as const,
            cron: timing.cron,
            timezone: timing.timezone,
            dst_gap: timing.gap,
            dst_fold: timing.fold,
          },
    allow_overlap: definition.allowOverlap,
    misfire_grace_seconds: definition.misfireGraceMs / 1000,
    last_fire_at: iso(row.last_fire_at),
    last_job_id: row.last_job_id,
    last_job_state: row.last_job_state,
    next_fire_at: iso(row.next_fire_at),
    preview,
    runs: row.runs,
    missed: row.missed,
    skipped: row.skipped,
    updated_at: iso(row.updated_at),
  };
}

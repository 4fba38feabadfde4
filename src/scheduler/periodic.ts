import type { Subscription } from 'rxjs';
import type { Logger } from 'pino';
import { v5 as uuidv5 } from 'uuid';
import type { ScheduleDefinition } from '../../config/schedules.js';
import { timerAt } from '../time/timer.js';
import type { JobService } from '../runtime/job-service.js';

/** Namespace of tick job ids: one id per schedule and tick instant. */
const TICK_NAMESPACE = 'b4b0a3c2-6a51-4c55-8f0e-2f7f5f0e9d61';

/**
 * The id of the job a schedule's tick creates. Every instance and every
 * restart derives the same id for the same tick, and the primary key lets
 * only one of them create it: a tick fires once.
 */
export function tickJobId(schedule: string, tick: number): string {
  return uuidv5(`${schedule}@${new Date(tick).toISOString()}`, TICK_NAMESPACE);
}

/** The latest tick at or before `now`. */
export function lastTick(everyMs: number, now: number): number {
  return Math.floor(now / everyMs) * everyMs;
}

/**
 * Turns periodic schedules into jobs. On start, a tick missed while the
 * service was down runs late if it is within the misfire grace (only the
 * latest: never a burst); then each tick creates its job as it comes.
 */
export class PeriodicScheduler {
  private readonly waits = new Map<string, Subscription>();

  constructor(
    private readonly options: {
      schedules: ScheduleDefinition[];
      service: JobService;
      misfireGraceMs: number;
      logger: Logger;
      now?: () => number;
    },
  ) {}

  private get now(): number {
    return (this.options.now ?? Date.now)();
  }

  async start(): Promise<void> {
    for (const schedule of this.options.schedules) {
      const missed = lastTick(schedule.everyMs, this.now);
      if (this.now - missed <= this.options.misfireGraceMs) await this.fire(schedule, missed);
      this.waitForNext(schedule, missed + schedule.everyMs);
    }
  }

  private waitForNext(schedule: ScheduleDefinition, tick: number): void {
    const wait = timerAt(tick, this.options.now ? { now: this.options.now } : {}).subscribe(() => {
      void this.fire(schedule, tick).finally(() => {
        if (this.waits.get(schedule.name) === wait) this.waitForNext(schedule, tick + schedule.everyMs);
      });
    });
    this.waits.set(schedule.name, wait);
  }

  private async fire(schedule: ScheduleDefinition, tick: number): Promise<void> {
    try {
      const result = await this.options.service.schedule(
        {
          jobType: schedule.jobType,
          timing: { kind: 'at', at: tick },
          metadata: {},
          jobId: tickJobId(schedule.name, tick),
        },
        'schedule.tick',
      );
      if (!result.duplicate) {
        this.options.logger.info(
          { schedule: schedule.name, tick: new Date(tick).toISOString(), job_id: result.jobId },
          'schedule ticked',
        );
      }
    } catch (err) {
      this.options.logger.error({ err, schedule: schedule.name }, 'schedule tick failed');
    }
  }

  stop(): void {
    for (const wait of this.waits.values()) wait.unsubscribe();
    this.waits.clear();
  }
}

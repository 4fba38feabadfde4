import Router from '@koa/router';
import type { Logger } from 'pino';
import {
  collectDefaultMetrics,
  Counter,
  Gauge,
  Histogram,
  Registry,
  type LabelValues,
} from 'prom-client';
import { JOB_TYPE_NAMES } from '../../config/job-types.js';
import { JOB_STATES } from '../../machines/job.machine.js';
import type { SchedulerEventBus, SchedulerEvents } from '../events.js';
import type { StoredCount } from '../store/inspector-sql.js';
import type { Services } from './app.js';

export interface MetricsOptions {
  bus: SchedulerEventBus;
  services: Services;
  /** Jobs in the table by state and job type; cached by the caller. */
  storedCounts: () => Promise<{ counts: StoredCount[] }>;
  /** Inspector streams open now. */
  streams?: () => number;
  logger: Logger;
}

/**
 * Buckets, in seconds or rows. A healthy dispatch lag is milliseconds; one
 * after downtime or a backlog is minutes. Replies take as long as the
 * backend's work, up to the job's timeout.
 */
const LAG_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800];
const REPLY_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600];
const BATCH_BUCKETS = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000];
const COMMIT_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];
const ATTEMPT_BUCKETS = [1, 2, 3, 4, 5, 10, 20, 50, 100];

const FINAL = new Set(['succeeded', 'dead', 'cancelled']);

/**
 * The service's Prometheus metrics, in a registry of its own (tests run
 * several services in one process). Counters and histograms are fed by the
 * event bus; job gauges are read at scrape time: live actors from the
 * runtime, stored jobs from a cached count of the table.
 */
export class SchedulerMetrics {
  readonly registry = new Registry();
  readonly router = new Router();
  private readonly listeners: (() => void)[] = [];
  private readonly retentionJobs: Counter;
  private readonly retentionTransitions: Counter;

  constructor(options: MetricsOptions) {
    const { bus, services } = options;
    const registry = this.registry;
    const registers = [registry];
    // Process CPU, memory, handles, GC, and event-loop lag (nodejs_eventloop_lag_*).
    collectDefaultMetrics({ register: registry });

    const zeroed = (gauge: Gauge<'state' | 'job_type'>) => {
      gauge.reset();
      for (const state of JOB_STATES) {
        for (const jobType of JOB_TYPE_NAMES) gauge.set({ state, job_type: jobType }, 0);
      }
    };
    new Gauge({
      name: 'scheduler_jobs_live',
      help: 'Jobs held as live actors, by state and job type',
      labelNames: ['state', 'job_type'],
      registers,
      collect() {
        zeroed(this);
        for (const snapshot of services.runtime?.liveSnapshots() ?? []) {
          this.inc({ state: String(snapshot.value), job_type: snapshot.context.jobType });
        }
      },
    });
    new Gauge({
      name: 'scheduler_jobs_stored',
      help: 'Jobs in the database by state and job type, finished ones included (cached 15 s)',
      labelNames: ['state', 'job_type'],
      registers,
      async collect() {
        if (!services.database) return;
        try {
          const { counts } = await options.storedCounts();
          zeroed(this);
          for (const c of counts) this.set({ state: c.state, job_type: c.job_type }, c.count);
        } catch (err) {
          // The previous values stay; a scrape still answers while Postgres is away.
          options.logger.warn({ err }, 'cannot count jobs for metrics');
        }
      },
    });
    new Gauge({
      name: 'scheduler_inspector_streams',
      help: 'Inspector event streams open',
      registers,
      collect() {
        this.set(options.streams?.() ?? 0);
      },
    });

    const transitions = new Counter({
      name: 'scheduler_transitions_total',
      help: 'Committed job transitions, by the states left and entered and job type',
      labelNames: ['from', 'to', 'job_type'],
      registers,
    });
    const attemptsAtEnd = new Histogram({
      name: 'scheduler_job_attempts',
      help: 'Attempts a job had made when it finished, by final state and job type',
      labelNames: ['state', 'job_type'],
      buckets: ATTEMPT_BUCKETS,
      registers,
    });
    const published = new Counter({
      name: 'scheduler_attempts_published_total',
      help: 'Attempts published and confirmed by the broker, by job type',
      labelNames: ['job_type'],
      registers,
    });
    const dispatchLag = new Histogram({
      name: 'scheduler_dispatch_lag_seconds',
      help: 'From the instant an attempt was due to its confirmed publish, by job type',
      labelNames: ['job_type'],
      buckets: LAG_BUCKETS,
      registers,
    });
    const replyLatency = new Histogram({
      name: 'scheduler_reply_latency_seconds',
      help: 'From the publish of an attempt to the reply that changed the job',
      labelNames: ['job_type', 'reply'],
      buckets: REPLY_BUCKETS,
      registers,
    });
    const commitRows = new Histogram({
      name: 'scheduler_commit_batch_rows',
      help: 'Job rows written by one group-commit statement',
      buckets: BATCH_BUCKETS,
      registers,
    });
    const commitSeconds = new Histogram({
      name: 'scheduler_commit_duration_seconds',
      help: 'Duration of one group-commit statement',
      buckets: COMMIT_BUCKETS,
      registers,
    });
    const reconnects = new Counter({
      name: 'scheduler_broker_reconnects_total',
      help: 'Times the broker connection came back after it was lost',
      registers,
    });
    const brokerUp = new Gauge({
      name: 'scheduler_broker_connected',
      help: '1 while the broker connection is up, as last reported',
      registers,
    });
    brokerUp.set(1);
    this.retentionJobs = new Counter({
      name: 'scheduler_retention_deleted_jobs_total',
      help: 'Finished jobs deleted by the history clean-up',
      registers,
    });
    this.retentionTransitions = new Counter({
      name: 'scheduler_retention_deleted_transitions_total',
      help: 'Transitions deleted with their jobs by the history clean-up',
      registers,
    });

    this.listen(bus, 'transition', (e) => {
      const labels: LabelValues<'from' | 'to' | 'job_type'> = {
        from: e.from ?? 'none',
        to: e.to,
        job_type: e.jobType,
      };
      transitions.inc(labels);
      if (FINAL.has(e.to)) attemptsAtEnd.observe({ state: e.to, job_type: e.jobType }, e.attempt);
    });
    this.listen(bus, 'dispatched', (e) => {
      published.inc({ job_type: e.jobType });
      dispatchLag.observe({ job_type: e.jobType }, Math.max(0, e.lagMs) / 1000);
    });
    this.listen(bus, 'replied', (e) => {
      if (e.latencyMs === null) return;
      const labels = { job_type: e.jobType, reply: e.reply };
      replyLatency.observe(labels, Math.max(0, e.latencyMs) / 1000);
    });
    this.listen(bus, 'committed', (e) => {
      commitRows.observe(e.rows);
      commitSeconds.observe(e.ms / 1000);
    });
    let down = false;
    this.listen(bus, 'broker', (e) => {
      brokerUp.set(e.up ? 1 : 0);
      if (e.up && down) reconnects.inc();
      down = !e.up;
    });

    this.router.get('/metrics', async (ctx) => {
      const body = await registry.metrics();
      ctx.set('content-type', registry.contentType);
      ctx.set('cache-control', 'no-store');
      ctx.body = body;
    });
  }

  /** Reports one run of the history clean-up. */
  retentionDeleted(jobs: number, transitions: number): void {
    this.retentionJobs.inc(jobs);
    this.retentionTransitions.inc(transitions);
  }

  /** Stops listening to the bus. */
  stop(): void {
    for (const off of this.listeners.splice(0)) off();
  }

  private listen<K extends keyof SchedulerEvents>(
    bus: SchedulerEventBus,
    name: K,
    listener: (...args: SchedulerEvents[K]) => void,
  ): void {
    bus.on(name as never, listener as never);
    this.listeners.push(() => bus.off(name as never, listener as never));
  }
}

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { ScheduleDefinition } from '../../config/schedules.js';
import { ScheduleService } from '../../src/scheduler/schedule-service.js';
import { tickJobId } from '../../src/scheduler/periodic.js';
import { FakeBackend } from '../support/backend.js';
import {
  cleanUp,
  eventually,
  getJson,
  isolatedEnv,
  startTestService,
  stopAllServices,
  type ServiceUnderTest,
} from '../support/harness.js';

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;

const post = async (url: string) => {
  const response = await fetch(url, { method: 'POST' });
  return { status: response.status, body: (await response.json()) as any };
};

describe('periodic schedules in PostgreSQL, over HTTP', () => {
  const env = isolatedEnv({
    MFA_EXPIRY_JOB_ENABLED: 'false',
    REGISTRATION_EXPIRY_JOB_ENABLED: 'false',
    RELATIONSHIP_CONSISTENCY_JOB_ENABLED: 'true',
    FILE_CLEANUP_JOB_ENABLED: 'true',
    // Weekly, Sunday 02:30 in Berlin: a year of previews crosses both changes.
    FILE_CLEANUP_JOB_CRON: '30 2 * * 0',
    FILE_CLEANUP_JOB_TIMEZONE: 'Europe/Berlin',
    FILE_CLEANUP_JOB_DST_FOLD: 'both',
    RELATIONSHIP_CONSISTENCY_JOB_INTERVAL_MINUTES: '1440',
  });
  let sut: ServiceUnderTest;
  let backend: FakeBackend;
  const probes: ScheduleService[] = [];
  const schema = env['SCHEDULER_POSTGRES_SCHEMA'];

  before(async () => {
    sut = await startTestService(env);
    backend = await FakeBackend.start(env);
  });
  after(async () => {
    for (const probe of probes) await probe.stop();
    await backend?.close();
    await stopAllServices();
    await cleanUp(env);
  });

  const row = async (name: string) =>
    (await sut.pool.query(`select * from "${schema}".schedules where name = $1`, [name])).rows[0];
  const jobsOf = async (name: string) =>
    (
      await sut.pool.query<{ id: string; scheduled_for: Date; state: string }>(
        `select id, scheduled_for, state from "${schema}".jobs
         where subject = $1 order by scheduled_for`,
        [`schedule:${name}`],
      )
    ).rows;

  /** A schedule service of the test's own, on the running service's database, with a clock. */
  const probe = (
    definition: ScheduleDefinition,
    now: () => number,
    jobs = sut.service.services.jobs,
  ) => {
    const database = sut.service.services.database;
    assert.ok(database && jobs);
    const service = new ScheduleService({
      definitions: [definition],
      jobs,
      pool: database.pool,
      schema: database.schema,
      logger: sut.logs.logger,
      now,
    });
    probes.push(service);
    return service;
  };

  it('a restart keeps the next tick of an unchanged timing; a new timing moves it', async () => {
    const file = await row('file_cleanup');
    assert.equal(file.job_type, 'file_cleanup');
    assert.deepEqual(file.spec, {
      kind: 'cron',
      cron: '30 2 * * 0',
      timezone: 'Europe/Berlin',
      dst_gap: 'shift',
      dst_fold: 'both',
    });
    assert.ok(file.next_fire_at > new Date());
    const mfa = await row('mfa_expiry_cleanup');
    assert.equal(mfa.enabled, false);
    assert.equal(mfa.next_fire_at, null);

    // A next tick that no timing would give shows whether a restart recomputed it.
    const marked = new Date('2099-01-01T00:00:00Z');
    await sut.pool.query(
      `update "${schema}".schedules
       set next_fire_at = $1
       where name = 'relationship_consistency_check'`,
      [marked],
    );
    await sut.stop();
    sut = await startTestService(env);
    assert.deepEqual((await row('relationship_consistency_check')).next_fire_at, marked);

    await sut.stop();
    sut = await startTestService({
      ...env,
      RELATIONSHIP_CONSISTENCY_JOB_INTERVAL_MINUTES: '720',
      MFA_EXPIRY_JOB_ENABLED: 'true',
    });
    const moved = await row('relationship_consistency_check');
    assert.equal(moved.next_fire_at.getTime() % (12 * HOUR), 0, 'on a multiple of 12 hours');
    assert.ok(moved.next_fire_at.getTime() - Date.now() <= 12 * HOUR);
    assert.ok((await row('mfa_expiry_cleanup')).next_fire_at !== null, 'enabled: ticks again');
    await sut.stop();
    sut = await startTestService(env);
  });

  it('GET /schedules previews fire instants, so a DST change shows before it happens', async () => {
    const { status, body } = await getJson(`${sut.baseUrl}/schedules?preview=60`);
    assert.equal(status, 200);
    const file = body.schedules.find((s: any) => s.name === 'file_cleanup');
    assert.deepEqual(file.timing, {
      kind: 'cron',
      cron: '30 2 * * 0',
      timezone: 'Europe/Berlin',
      dst_gap: 'shift',
      dst_fold: 'both',
    });
    assert.equal(file.next_fire_at, file.preview[0].at);
    assert.equal(file.last_fire_at, null);
    assert.equal(file.preview.length, 60);
    const locals: string[] = file.preview.map((p: { local: string }) => p.local);
    // Winter and summer offsets both appear within 60 weeks.
    assert.ok(locals.some((l) => l.endsWith('+01:00')) && locals.some((l) => l.endsWith('+02:00')));
    // The spring Sunday's 02:30 does not exist: shifted to 03:30 summer time.
    const shifted = locals.filter((l) => !l.includes('T02:30:00'));
    assert.equal(shifted.length, 1, locals.join(' '));
    assert.match(shifted[0] ?? '', /-03-\d\dT03:30:00\+02:00$/);
    // The autumn Sunday's 02:30 happens twice, and 'both' runs both.
    const days = locals.map((l) => l.slice(0, 10));
    const twice = days.filter((d, i) => days.indexOf(d) !== i);
    assert.equal(twice.length, 1, locals.join(' '));
    assert.deepEqual(
      locals.filter((l) => l.startsWith(twice[0] ?? '')),
      [`${twice[0]}T02:30:00+02:00`, `${twice[0]}T02:30:00+01:00`],
    );
    for (const p of file.preview) {
      const [wall, sign, hh] = /^(.{19})([+-])(\d\d):00$/.exec(p.local)?.slice(1) ?? [];
      const offset = Number(hh) * HOUR * (sign === '-' ? -1 : 1);
      assert.equal(Date.parse(`${wall}Z`) - offset, Date.parse(p.at), `${p.local} is ${p.at}`);
    }

    const relationship = body.schedules.find(
      (s: any) => s.name === 'relationship_consistency_check',
    );
    assert.deepEqual(relationship.timing, { kind: 'interval', every_seconds: 86_400 });
    assert.equal((await getJson(`${sut.baseUrl}/schedules`)).body.schedules[0].preview.length, 5);

    const badPreview = await getJson(`${sut.baseUrl}/schedules?preview=lots`);
    assert.equal(badPreview.status, 400);
    assert.equal(badPreview.body.error.field, 'preview');
    const unknown = await getJson(`${sut.baseUrl}/schedules/nightly_backup`);
    assert.equal(unknown.status, 404);
    assert.deepEqual(unknown.body, {
      error: { code: 'not_found', message: 'schedule nightly_backup not found' },
    });
  });

  it('pauses, resumes and triggers by name; a trigger waits for the previous run', async () => {
    const url = `${sut.baseUrl}/schedules/relationship_consistency_check`;
    assert.equal((await post(`${sut.baseUrl}/schedules/nightly_backup/pause`)).status, 404);
    assert.equal((await post(`${sut.baseUrl}/schedules/nightly_backup/trigger`)).status, 404);

    const paused = await post(`${url}/pause`);
    assert.equal(paused.status, 200);
    assert.equal(paused.body.paused, true);
    assert.equal(paused.body.next_fire_at, null);
    assert.equal((await row('relationship_consistency_check')).paused, true);

    // A trigger runs even while paused; the backend keeps this first run in flight.
    backend.behaviour = () => ({ kind: 'silent' });
    const first = await post(`${url}/trigger`);
    assert.equal(first.status, 201);
    assert.equal(first.body.schedule.last_job_id, first.body.job_id);
    assert.equal(first.body.schedule.runs, 1);
    assert.equal(first.body.schedule.next_fire_at, null, 'still paused');
    await backend.waitForExecutes(first.body.job_id, 1);
    assert.equal(
      backend.received.at(-1)?.routingKey,
      'jobs.execute.relationship_consistency_check',
    );

    const refused = await post(`${url}/trigger`);
    assert.equal(refused.status, 409);
    assert.equal(refused.body.error.code, 'conflict');
    assert.match(refused.body.error.message, /previous run .* is still (dispatched|awaiting-ack)/);

    await backend.publish('jobs.completed', {
      event_type: 'jobs.completed',
      job_id: first.body.job_id,
      completed_at: new Date().toISOString(),
    });
    await eventually(async () => (await getJson(url)).body.last_job_state === 'succeeded');
    backend.behaviour = () => ({ kind: 'complete' });
    const second = await post(`${url}/trigger`);
    assert.equal(second.status, 201);
    assert.notEqual(second.body.job_id, first.body.job_id);
    await backend.waitForExecutes(second.body.job_id, 1);

    const resumed = await post(`${url}/resume`);
    assert.equal(resumed.status, 200);
    assert.equal(resumed.body.paused, false);
    assert.equal(Date.parse(resumed.body.next_fire_at) % (24 * HOUR), 0);
    assert.ok(Date.parse(resumed.body.next_fire_at) > Date.now());
    assert.equal((await post(`${url}/resume`)).body.next_fire_at, resumed.body.next_fire_at);
    const jobs = await jobsOf('relationship_consistency_check');
    assert.deepEqual(jobs.map((j) => j.id).sort(), [first.body.job_id, second.body.job_id].sort());
  });

  it('after downtime: one late run within the grace, else all missed; never twice', async () => {
    backend.behaviour = () => ({ kind: 'complete' });
    const definition: ScheduleDefinition = {
      name: 'probe_hourly',
      jobType: 'file_cleanup',
      enabled: true,
      timing: { kind: 'interval', everyMs: HOUR },
      allowOverlap: false,
      misfireGraceMs: 5 * MINUTE,
    };
    // Two days back, so each run's job is due at once on the real clock.
    const base = Math.floor(Date.now() / HOUR) * HOUR - 48 * HOUR;
    let clock = base + 30_000;
    const now = () => clock;

    const first = probe(definition, now);
    await first.start();
    assert.equal((await row('probe_hourly')).next_fire_at.getTime(), base + HOUR);
    await first.stop();
    assert.equal((await jobsOf('probe_hourly')).length, 0, 'a new schedule does not run at once');

    // Down through the ticks at +1h..+4h; the one at +4h is three minutes late.
    clock = base + 4 * HOUR + 3 * MINUTE;
    const second = probe(definition, now);
    await second.start();
    await second.stop();
    const third = probe(definition, now);
    await third.start();
    await third.stop();
    let jobs = await jobsOf('probe_hourly');
    assert.deepEqual(
      jobs.map((j) => j.scheduled_for.getTime()),
      [base + 4 * HOUR],
    );
    assert.equal(jobs[0]?.id, tickJobId('probe_hourly', base + 4 * HOUR));
    await eventually(async () => (await jobsOf('probe_hourly'))[0]?.state === 'succeeded');
    let state = await row('probe_hourly');
    assert.deepEqual([state.runs, state.missed, state.skipped], [1, 3, 0]);
    assert.equal(state.next_fire_at.getTime(), base + 5 * HOUR);

    // Down through +5h..+7h; the one at +7h is ten minutes late: beyond the grace.
    clock = base + 7 * HOUR + 10 * MINUTE;
    const fourth = probe(definition, now);
    await fourth.start();
    await fourth.stop();
    assert.equal((await jobsOf('probe_hourly')).length, 1, 'no run beyond the grace');
    state = await row('probe_hourly');
    assert.deepEqual([state.runs, state.missed, state.skipped], [1, 6, 0]);
    assert.ok(sut.logs.find('schedule ticks missed: later than the misfire grace').length > 0);

    // Two instances find the tick at +8h due at the same moment.
    clock = base + 8 * HOUR + 1000;
    const a = probe(definition, now);
    const b = probe(definition, now);
    await Promise.all([a.start(), b.start()]);
    await Promise.all([a.check('probe_hourly'), b.check('probe_hourly'), a.check('probe_hourly')]);
    jobs = await jobsOf('probe_hourly');
    assert.deepEqual(
      jobs.map((j) => j.scheduled_for.getTime()),
      [base + 4 * HOUR, base + 8 * HOUR],
    );
    state = await row('probe_hourly');
    assert.deepEqual([state.runs, state.missed, state.skipped], [2, 6, 0]);
    await a.stop();
    await b.stop();
    for (const job of jobs) assert.equal((await backend.waitForExecutes(job.id, 1)).length, 1);
  });

  it('skips and counts a tick while the last run is in flight, unless overlap is on', async () => {
    const base = Math.floor(Date.now() / HOUR) * HOUR - 24 * HOUR;
    let clock = base + 1000;
    const now = () => clock;
    const definition = (name: string, allowOverlap: boolean): ScheduleDefinition => ({
      name,
      jobType: 'file_cleanup',
      enabled: true,
      timing: { kind: 'interval', everyMs: HOUR },
      allowOverlap,
      misfireGraceMs: 5 * MINUTE,
    });
    backend.behaviour = () => ({ kind: 'silent' });
    const strict = probe(definition('probe_strict', false), now);
    const relaxed = probe(definition('probe_relaxed', true), now);
    await strict.start();
    await relaxed.start();

    for (const hour of [1, 2, 3]) {
      clock = base + hour * HOUR + 1000;
      await strict.check('probe_strict');
      await relaxed.check('probe_relaxed');
      if (hour === 1) {
        const [run] = await jobsOf('probe_strict');
        await backend.waitForExecutes(run?.id ?? '', 1);
      }
    }
    assert.equal((await jobsOf('probe_strict')).length, 1, 'the first run is still in flight');
    assert.equal((await jobsOf('probe_relaxed')).length, 3);
    const state = await row('probe_strict');
    assert.deepEqual([state.runs, state.missed, state.skipped], [1, 0, 2]);
    const skips = sut.logs.find('schedule tick skipped: the previous run is still in flight');
    assert.ok(skips.length >= 2);

    // Once the run is over, the next tick runs again.
    const [run] = await jobsOf('probe_strict');
    await backend.publish('jobs.completed', {
      event_type: 'jobs.completed',
      job_id: run?.id,
      completed_at: new Date().toISOString(),
    });
    await eventually(async () => (await jobsOf('probe_strict'))[0]?.state === 'succeeded');
    clock = base + 4 * HOUR + 1000;
    await strict.check('probe_strict');
    assert.equal((await jobsOf('probe_strict')).length, 2);
    backend.behaviour = () => ({ kind: 'complete' });
  });

  it('a claimed tick whose job was not created (a crash) gets it from the next look', async () => {
    const base = Math.floor(Date.now() / HOUR) * HOUR - 24 * HOUR;
    const clock = base + HOUR + 1000;
    const definition: ScheduleDefinition = {
      name: 'probe_repair',
      jobType: 'file_cleanup',
      enabled: true,
      timing: { kind: 'interval', everyMs: HOUR },
      allowOverlap: false,
      misfireGraceMs: 5 * MINUTE,
    };
    await sut.pool.query(
      `insert into "${schema}".schedules (name, job_type, spec, misfire_grace_ms, next_fire_at)
       values ('probe_repair', 'file_cleanup', $1, 300000, $2)`,
      [JSON.stringify({ kind: 'interval', every_ms: HOUR }), new Date(base + HOUR)],
    );
    const broken = probe(definition, () => clock, {
      schedule: () => Promise.reject(new Error('connection lost')),
    } as never);
    await broken.start();
    await broken.stop();
    let state = await row('probe_repair');
    assert.equal(state.pending_job_id, tickJobId('probe_repair', base + HOUR));
    assert.equal((await jobsOf('probe_repair')).length, 0);

    const repaired = probe(definition, () => clock);
    await repaired.start();
    await repaired.stop();
    const jobs = await jobsOf('probe_repair');
    assert.deepEqual(
      jobs.map((j) => j.id),
      [tickJobId('probe_repair', base + HOUR)],
    );
    state = await row('probe_repair');
    assert.equal(state.pending_job_id, null);
    assert.deepEqual([state.runs, state.missed], [1, 0]);
  });

  it('a claimed tick whose job was not created is counted missed once it is past the grace', async () => {
    const base = Math.floor(Date.now() / HOUR) * HOUR - 24 * HOUR;
    const definition: ScheduleDefinition = {
      name: 'probe_stale',
      jobType: 'file_cleanup',
      enabled: true,
      timing: { kind: 'interval', everyMs: HOUR },
      allowOverlap: false,
      misfireGraceMs: 5 * MINUTE,
    };
    await sut.pool.query(
      `insert into "${schema}".schedules (name, job_type, spec, misfire_grace_ms, next_fire_at)
       values ('probe_stale', 'file_cleanup', $1, 300000, $2)`,
      [JSON.stringify({ kind: 'interval', every_ms: HOUR }), new Date(base + HOUR)],
    );
    const broken = probe(definition, () => base + HOUR + 1000, {
      schedule: () => Promise.reject(new Error('connection lost')),
    } as never);
    await broken.start();
    await broken.stop();
    assert.equal((await row('probe_stale')).pending_job_id, tickJobId('probe_stale', base + HOUR));

    // The next look comes 20 minutes after the tick: past its 5-minute grace.
    const later = probe(definition, () => base + HOUR + 20 * MINUTE);
    await later.start();
    await later.stop();
    assert.equal((await jobsOf('probe_stale')).length, 0, 'no late run past the grace');
    const state = await row('probe_stale');
    assert.equal(state.pending_job_id, null);
    assert.deepEqual([state.runs, state.missed], [0, 1]);
  });

  it('a cron in Berlin with fold "both" runs the repeated 02:30 twice, as two jobs', async () => {
    let clock = Date.parse('2025-10-25T12:00:00Z');
    const service = probe(
      {
        name: 'probe_fold',
        jobType: 'file_cleanup',
        enabled: true,
        timing: {
          kind: 'cron',
          cron: '30 2 * * *',
          timezone: 'Europe/Berlin',
          gap: 'shift',
          fold: 'both',
        },
        allowOverlap: true,
        misfireGraceMs: MINUTE,
      },
      () => clock,
    );
    await service.start();
    assert.equal((await row('probe_fold')).next_fire_at.toISOString(), '2025-10-26T00:30:00.000Z');
    clock = Date.parse('2025-10-26T00:30:01Z');
    await service.check('probe_fold');
    assert.equal((await row('probe_fold')).next_fire_at.toISOString(), '2025-10-26T01:30:00.000Z');
    clock = Date.parse('2025-10-26T01:30:01Z');
    await service.check('probe_fold');
    await service.stop();
    const jobs = await jobsOf('probe_fold');
    assert.deepEqual(
      jobs.map((j) => j.scheduled_for.toISOString()),
      ['2025-10-26T00:30:00.000Z', '2025-10-26T01:30:00.000Z'],
    );
    assert.equal((await row('probe_fold')).next_fire_at.toISOString(), '2025-10-27T01:30:00.000Z');
  });
});

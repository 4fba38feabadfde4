import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { FakeBackend } from '../support/backend.js';
import {
  cleanUp,
  eventually,
  isolatedEnv,
  startTestService,
  stopAllServices,
  type ServiceUnderTest,
} from '../support/harness.js';

const CHROMIUM = process.env['CHROMIUM_PATH'] ?? '/usr/bin/chromium';
const OUTPUT = fileURLToPath(new URL('../../test-output/e2e/', import.meta.url));
const TOKEN = 'inspector-page-token-0123456789';

/**
 * Flags for a machine without network: without the background-networking
 * ones Chromium keeps trying to reach its update and sync services.
 */
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

describe('the inspector page in headless Chromium', () => {
  const env = isolatedEnv({ SCHEDULER_API_TOKEN: TOKEN, REMINDER_JOB_TIMEOUT_SECONDS: '60' });
  let sut: ServiceUnderTest;
  let backend: FakeBackend;
  let browser: BrowserContext;
  let profile: string;
  let page: Page;
  const requests: string[] = [];
  const failures: string[] = [];

  before(async () => {
    sut = await startTestService(env);
    backend = await FakeBackend.start(env);
    backend.behaviour = () => ({ kind: 'silent' });
    profile = await mkdtemp(path.join(tmpdir(), 'inspector-chromium-'));
    browser = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: 1400, height: 900 },
    });
    page = browser.pages()[0] ?? (await browser.newPage());
    page.on('request', (r) => requests.push(r.url()));
    page.on('pageerror', (err) => failures.push(err.message));
    page.on('console', (m) => {
      if (m.type() === 'error') failures.push(m.text());
    });
  });
  after(async () => {
    await browser?.close();
    if (profile) await rm(profile, { recursive: true, force: true });
    await backend?.close();
    await stopAllServices();
    await cleanUp(env);
  });

  const stateOf = (id: string) =>
    page.locator(`#jobs tr[data-job-id="${id}"] td.state [data-state]`).getAttribute('data-state');

  it('loads with the token, shows a new job, follows it to succeeded live', async () => {
    const response = await page.goto(`${sut.baseUrl}/debug?token=${TOKEN}`);
    assert.equal(response?.status(), 200);
    await page.waitForSelector('#count-pending');
    await eventually(async () => (await page.textContent('#status')) === 'live', 5000, 'live');
    // A value set now survives only if the page is never reloaded.
    const marker = () => (globalThis as unknown as { marker?: number }).marker;
    await page.evaluate(() => ((globalThis as unknown as { marker: number }).marker = 42));

    const created = await backend.command('jobs.schedule', {
      job_type: 'lesson_reminder',
      delay_seconds: 3,
      subject: 'lesson:e2e',
    });
    const id: string = created.job_id;
    // Listed from the stream: the page reads /debug/jobs only every 15 s by itself,
    // and the job leaves pending after 3 s.
    await eventually(async () => (await stateOf(id)) === 'pending', 2500, 'the new job listed');
    const creation = page.locator('#feed li', { hasText: id.slice(0, 8) });
    assert.match((await creation.first().textContent()) ?? '', /→\s*pending\s*jobs\.schedule/);
    // The counts are read again shortly after a transition.
    await eventually(
      async () => Number(await page.textContent('#count-pending .live')) >= 1,
      2000,
      'counted pending',
    );

    // The table is drawn again on every event; a click that lands on a row
    // being replaced selects nothing, so click until the timeline opens.
    await eventually(
      async () => {
        await page.click(`#jobs tr[data-job-id="${id}"]`, { timeout: 2000 });
        await page.waitForSelector('#steps [data-transition-id]', { timeout: 1500 });
        return true;
      },
      15_000,
      'the job timeline to open',
    );
    assert.match((await page.textContent('#timeline')) ?? '', /lesson:e2e/);

    const [execute] = await backend.waitForExecutes(id, 1, 10_000);
    await eventually(async () => (await stateOf(id)) === 'awaiting-ack', 5000, 'awaiting-ack');
    await backend.publish('jobs.completed', {
      event_type: 'jobs.completed',
      job_id: id,
      completed_at: new Date().toISOString(),
      result: { reminded: true },
      attempt: execute?.body.attempt,
    });
    await eventually(async () => (await stateOf(id)) === 'succeeded', 5000, 'succeeded');
    await eventually(
      async () => (await page.locator('#steps [data-transition-id]').count()) === 4,
      5000,
      'the whole timeline',
    );
    const steps = await page.locator('#steps .step').allTextContents();
    assert.match(steps.at(-1) ?? '', /awaiting-ack.*→.*succeeded.*jobs\.completed/);
    assert.match((await page.textContent('#feed')) ?? '', /succeeded/);
    assert.equal(await page.evaluate(marker), 42);

    const count = (state: string) => page.textContent(`#count-${state} .live`);
    await eventually(async () => (await count('succeeded')) === '1', 5000, 'counted succeeded');
    await eventually(async () => (await count('pending')) === '0', 5000, 'none pending');
    await eventually(
      async () => /not live/.test((await page.textContent('#timeline')) ?? ''),
      5000,
      'the timeline read again once finished',
    );

    await mkdir(OUTPUT, { recursive: true });
    await page.screenshot({ path: path.join(OUTPUT, 'inspector-page.png'), fullPage: true });

    const base = new URL(sut.baseUrl);
    const foreign = requests.filter((r) => new URL(r).host !== base.host && !r.startsWith('data:'));
    assert.deepEqual(foreign, [], 'nothing fetched from elsewhere');
    const own = requests.filter((r) => new URL(r).host === base.host);
    assert.ok(
      own.some((r) => r.includes('/debug/events?token=')),
      'the stream carries the token',
    );
    assert.ok(own.every((r) => new URL(r).searchParams.get('token') === TOKEN));
    assert.deepEqual(failures, []);
  });

  it('without the token the page is refused', async () => {
    const response = await page.goto(`${sut.baseUrl}/debug`);
    assert.equal(response?.status(), 401);
  });
});

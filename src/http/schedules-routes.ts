import Router from '@koa/router';
import type { Context } from 'koa';
import { RequestRefused } from '../runtime/job-service.js';
import { HttpError, requireService, type Services } from './app.js';

/** Fire instants GET /schedules previews by default, and at most. */
const PREVIEW = { default: 5, max: 100 };

function previewCount(ctx: Context): number {
  const raw = ctx.query['preview'];
  if (raw === undefined) return PREVIEW.default;
  const value = typeof raw === 'string' && /^\d+$/.test(raw) ? Number(raw) : NaN;
  if (!(value >= 0 && value <= PREVIEW.max)) {
    throw new HttpError(
      400,
      'invalid_preview',
      `preview: expected a whole number from 0 to ${PREVIEW.max}`,
      'preview',
    );
  }
  return value;
}

/** Runs a schedule request, answering a refused one with 404 (unknown name) or 409. */
async function answer<T>(work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (err) {
    if (err instanceof RequestRefused) {
      throw new HttpError(err.code === 'not_found' ? 404 : 409, err.code, err.message);
    }
    throw err;
  }
}

/**
 * The schedules API: list with last, next and upcoming fire instants (in UTC
 * and in the schedule's zone, so a daylight-saving change shows before it
 * happens), and pause, resume and trigger by name. Reads `services` on each
 * request, so it can be mounted before start-up has made the service.
 */
export function createSchedulesRouter(services: Services): Router {
  const router = new Router();
  const name = (ctx: Context) => (ctx.params as Record<string, string>)['name'] ?? '';

  router.get('/schedules', async (ctx) => {
    const count = previewCount(ctx);
    const schedules = requireService(services.schedules);
    ctx.body = { schedules: await schedules.list(count) };
  });

  router.get('/schedules/:name', async (ctx) => {
    const count = previewCount(ctx);
    const schedules = requireService(services.schedules);
    ctx.body = await answer(() => schedules.get(name(ctx), count));
  });

  router.post('/schedules/:name/pause', async (ctx) => {
    const schedules = requireService(services.schedules);
    ctx.body = await answer(() => schedules.pause(name(ctx)));
  });

  router.post('/schedules/:name/resume', async (ctx) => {
    const schedules = requireService(services.schedules);
    ctx.body = await answer(() => schedules.resume(name(ctx)));
  });

  router.post('/schedules/:name/trigger', async (ctx) => {
    const schedules = requireService(services.schedules);
    const { jobId, schedule } = await answer(() => schedules.trigger(name(ctx)));
    ctx.status = 201;
    ctx.body = { job_id: jobId, schedule };
  });

  return router;
}

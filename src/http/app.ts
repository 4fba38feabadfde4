import http from 'node:http';
import { createHash, timingSafeEqual } from 'node:crypto';
import Koa, { type Context, type Next } from 'koa';
import Router from '@koa/router';
import type { Logger } from 'pino';
import type { SchedulerEventBus } from '../events.js';
import type { JobRuntime } from '../runtime/job-runtime.js';
import type { JobService } from '../runtime/job-service.js';
import type { ScheduleService } from '../scheduler/schedule-service.js';
import type { Database } from '../store/database.js';

/** An error the HTTP edge answers with its status and the error body of PROTOCOL.md. */
export class HttpError extends Error {
  override readonly name = 'HttpError';
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly field?: string,
  ) {
    super(message);
  }
}

export interface Readiness {
  /** Start-up finished and shutdown has not begun. */
  started: boolean;
  stopping: boolean;
  postgres: () => Promise<boolean>;
  rabbitmq: () => boolean;
}

export interface AppOptions {
  appName: string;
  version: string;
  apiToken: string | undefined;
  logger: Logger;
  readiness: Readiness;
  /** Filled in as start-up goes; routes that need a missing one answer 503. */
  services: Services;
  /** Further routes, mounted behind the token rule. */
  routers?: Router[];
}

/** What routes work with, as far as start-up has made it. */
export interface Services {
  bus: SchedulerEventBus;
  jobs?: JobService;
  runtime?: JobRuntime;
  database?: Database;
  schedules?: ScheduleService;
}

function isLoopback(address: string | undefined): boolean {
  if (!address) return false;
  const v4 = address.startsWith('::ffff:') ? address.slice(7) : address;
  return v4.startsWith('127.') || address === '::1';
}

/** Compares digests, so neither the content nor the length of the token leaks through timing. */
function sameSecret(given: string, expected: string): boolean {
  const digest = (text: string) => createHash('sha256').update(text).digest();
  return timingSafeEqual(digest(given), digest(expected));
}

const BEARER = /^bearer[ \t]+(\S+)[ \t]*$/i;

/** Routes a browser opens itself (the inspector page, its event stream). */
const takesQueryToken = (path: string) => path === '/debug' || path.startsWith('/debug/');

/**
 * The token rule of PROTOCOL.md: with SCHEDULER_API_TOKEN set, an
 * `Authorization: Bearer` token must match, or, on /debug routes only (a
 * browser cannot set the header on a page load or an EventSource), the
 * `token` query parameter; without it, only loopback clients are answered.
 * A refusal is logged with the method, the path without its query string,
 * the client and which rule failed, never with what was presented.
 */
export function authorize(options: Pick<AppOptions, 'apiToken' | 'logger'>) {
  return async (ctx: Context, next: Next) => {
    const token = options.apiToken;
    const ip = ctx.request.ip || ctx.req.socket.remoteAddress;
    let refused: string | undefined;
    if (token) {
      const bearer = BEARER.exec(ctx.get('authorization'))?.[1];
      const query = takesQueryToken(ctx.path) ? ctx.query['token'] : undefined;
      const given = [bearer, typeof query === 'string' ? query : undefined].filter(
        (value) => value !== undefined,
      );
      if (given.length === 0) refused = 'no token';
      else if (!given.some((value) => sameSecret(value, token))) refused = 'wrong token';
    } else if (!isLoopback(ip)) {
      refused = 'not a loopback client and SCHEDULER_API_TOKEN is not set';
    }
    if (refused) {
      const { method, path } = ctx;
      options.logger.warn({ method, path, ip, reason: refused }, 'unauthorized');
      if (token) ctx.set('WWW-Authenticate', 'Bearer');
      throw new HttpError(
        401,
        'unauthorized',
        token ? 'a valid bearer token is required' : 'only loopback clients are answered',
      );
    }
    await next();
  };
}

export function createApp(options: AppOptions): Koa {
  const app = new Koa();
  const open = new Router();
  const guarded = new Router();

  app.use(async (ctx, next) => {
    try {
      await next();
      if (ctx.status === 404 && ctx.body === undefined) {
        throw new HttpError(404, 'not_found', `no route ${ctx.method} ${ctx.path}`);
      }
    } catch (err) {
      if (err instanceof HttpError) {
        ctx.status = err.status;
        ctx.body = {
          error: { code: err.code, message: err.message, ...(err.field && { field: err.field }) },
        };
      } else {
        options.logger.error({ err, method: ctx.method, path: ctx.path }, 'request failed');
        ctx.status = 500;
        ctx.body = { error: { code: 'internal', message: 'internal error' } };
      }
    }
  });

  open.get('/health', (ctx) => {
    ctx.body = { status: 'healthy', service: 'job_scheduler', timestamp: new Date().toISOString() };
  });

  open.get('/health/ready', async (ctx) => {
    const { readiness } = options;
    const postgres = readiness.started ? await readiness.postgres() : false;
    const rabbitmq = readiness.started ? readiness.rabbitmq() : false;
    const ready = readiness.started && !readiness.stopping && postgres && rabbitmq;
    ctx.status = ready ? 200 : 503;
    const phase = readiness.stopping ? 'stopping' : readiness.started ? 'started' : 'starting';
    ctx.body = {
      status: ready ? 'ready' : 'not_ready',
      phase,
      checks: {
        postgres: postgres ? 'up' : readiness.started ? 'down' : 'pending',
        rabbitmq: rabbitmq ? 'up' : readiness.started ? 'down' : 'pending',
      },
      timestamp: new Date().toISOString(),
    };
  });

  open.get('/', (ctx) => {
    const { readiness } = options;
    ctx.body = {
      service: options.appName,
      version: options.version,
      status: readiness.stopping ? 'stopping' : readiness.started ? 'running' : 'starting',
    };
  });

  guarded.use(authorize(options));

  for (const router of options.routers ?? []) guarded.use(router.routes(), router.allowedMethods());
  app.use(open.routes());
  app.use(guarded.routes());
  return app;
}

export function requireService<T>(service: T | undefined): T {
  if (!service) throw new HttpError(503, 'starting', 'the service is still starting');
  return service;
}

/** Starts listening; resolves with the server once it accepts connections. */
export function listen(app: Koa, host: string, port: number): Promise<http.Server> {
  return new Promise((resolve, reject) => {
    const server = http.createServer(app.callback());
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve(server);
    });
  });
}

/** Closes the server and every connection it holds, idle or not. */
export function closeServer(server: http.Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve());
    server.closeIdleConnections();
    setTimeout(() => server.closeAllConnections(), 1000).unref();
  });
}

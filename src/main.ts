import { existsSync, readFileSync } from 'node:fs';
import pino from 'pino';
import { ConfigError, loadConfig } from '../config/env.js';
import { createLogger, secretsOf } from './logger.js';
import { startService } from './service.js';

/** The version in package.json, found from here whether run from source or from dist/. */
function packageVersion(): string {
  for (const up of ['../package.json', '../../package.json']) {
    const url = new URL(up, import.meta.url);
    if (existsSync(url))
      return (JSON.parse(readFileSync(url, 'utf8')) as { version: string }).version;
  }
  return '0.0.0';
}

async function main(): Promise<void> {
  let config;
  let logs;
  try {
    config = loadConfig(process.env, packageVersion());
    logs = createLogger(config.log, { secrets: secretsOf(config) });
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    pino({ base: { service: 'job_scheduler' } }).fatal(err.message);
    process.exitCode = 78; // EX_CONFIG
    return;
  }

  const { logger } = logs;
  // Buffered lines reach stdout and the log files before the process ends.
  const closeLogs = () => void logs.close();
  const service = await startService(config, logger);
  service.started.catch((err: unknown) => {
    if (service.readiness.stopping) return;
    logger.fatal({ err }, 'start-up failed');
    void service.stop().finally(() => {
      process.exitCode = 1;
      closeLogs();
    });
  });

  const shutdown = (signal: string) => {
    logger.info({ signal }, 'shutting down');
    const grace = setTimeout(() => {
      logger.error({ graceMs: config.shutdownGraceMs }, 'shutdown grace exceeded; exiting');
      logs.flushSync();
      process.exit(1);
    }, config.shutdownGraceMs);
    grace.unref();
    service.stop().then(
      () => {
        clearTimeout(grace);
        logger.info('stopped');
        closeLogs();
      },
      (err: unknown) => {
        logger.error({ err }, 'shutdown failed');
        process.exitCode = 1;
        closeLogs();
      },
    );
  };
  process.once('SIGTERM', () => shutdown('SIGTERM'));
  process.once('SIGINT', () => shutdown('SIGINT'));
}

await main();

import fs from 'node:fs';
import path from 'node:path';
import pino, { type Logger } from 'pino';
import type { Config } from '../config/env.js';

/** Log fields that may hold secrets; pino replaces them before a line is written. */
export const REDACTED_PATHS = [
  'password',
  '*.password',
  'token',
  '*.token',
  'authorization',
  'req.headers.authorization',
  'headers.authorization',
];

/**
 * The service's logger: JSON lines to stdout (LOG_CONSOLE) and, when LOG_DIR is
 * set, to `<LOG_DIR>/scheduler.log` as well.
 */
export function createLogger(config: Config['log'], base: Record<string, unknown> = {}): Logger {
  const streams: pino.StreamEntry[] = [];
  if (config.console) streams.push({ stream: pino.destination({ dest: 1, sync: false }) });
  if (config.dir) {
    fs.mkdirSync(config.dir, { recursive: true });
    const file = path.join(config.dir, 'scheduler.log');
    streams.push({ stream: pino.destination({ dest: file, mkdir: true, sync: false }) });
  }
  return pino(
    {
      level: config.level,
      base: { service: 'job_scheduler', ...base },
      redact: { paths: REDACTED_PATHS, censor: '***' },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    pino.multistream(streams.length > 0 ? streams : [{ stream: pino.destination('/dev/null') }]),
  );
}

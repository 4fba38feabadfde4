/**
 * Start-up stops on a bad environment variable; the message names it. Its own
 * module so that config/env.ts and config/schedules.ts, which env.ts imports,
 * can both throw it.
 */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

/**
 * A failure that says nothing about the message or request itself: the
 * database or broker is unreachable, or the service is shutting down. The
 * message goes back to its queue without counting as a failed try.
 */
export class TransientError extends Error {
  override readonly name = 'TransientError';
}

/** Connection-level error codes of Node sockets and PostgreSQL (class 08, 57P admin shutdown). */
const TRANSIENT_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EPIPE',
  'ENOTFOUND',
  'EAI_AGAIN',
  '57P01',
  '57P02',
  '57P03',
]);

/** What pg says, without a code, when its connection to the server went away. */
const CONNECTION_LOST =
  /Connection terminated|timeout exceeded when trying to connect|connection error/i;

/** True for a failure that will likely pass by itself: an outage, not a bad input. */
export function isTransient(err: unknown): boolean {
  if (err instanceof TransientError) return true;
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === 'string' && (TRANSIENT_CODES.has(code) || code.startsWith('08'))) {
    return true;
  }
  const message = err instanceof Error ? err.message : '';
  return CONNECTION_LOST.test(message);
}

/**
 * True for a PostgreSQL error caused by the data of one row (class 22 data
 * exception, class 23 integrity violation): retrying the same row fails again.
 */
export function isDataError(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && (code.startsWith('22') || code.startsWith('23'));
}

import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import pino, { type Logger } from 'pino';
import { ConfigError, type Config } from '../config/env.js';

/** What stands in for a hidden secret. */
const CENSOR = '***';

/**
 * Log fields that hold secrets whatever their value, replaced as a line is
 * written. They are serializers, not pino `redact` paths: a serializer costs
 * nothing on a line without its key, while `redact` with the `*.password`
 * kind of wildcard took an info line from 0.8 to 3.8 µs.
 */
export const REDACTED_FIELDS = ['password', 'token', 'apiToken', 'authorization', 'cookie'];

/** Request headers with the credentials taken out. */
function redactHeaders(headers: unknown): unknown {
  if (typeof headers !== 'object' || headers === null) return headers;
  const shown: Record<string, unknown> = { ...headers };
  for (const key of Object.keys(shown)) {
    if (/^(authorization|cookie|proxy-authorization)$/i.test(key)) shown[key] = CENSOR;
  }
  return shown;
}

const SERIALIZERS: Record<string, pino.SerializerFn> = {
  ...Object.fromEntries(REDACTED_FIELDS.map((field) => [field, () => CENSOR])),
  headers: redactHeaders,
  err: pino.stdSerializers.err,
};

/** The active log file in LOG_DIR; backups are `scheduler.log.1` (newest) to `.N`. */
export const LOG_FILE_NAME = 'scheduler.log';

/**
 * Configured secrets shorter than this are hidden in URLs, `token=`,
 * `password=` and the fields above, but not searched for in free text: short
 * development values such as `guest` are also user names, and hiding them
 * everywhere would blank out half of a line.
 */
const MIN_SCRUBBED_LENGTH = 6;

/** `scheme://user:password@`: libraries quote URLs in errors (Node's fetch: password and all). */
const URL_CREDENTIALS = /([a-z][a-z0-9+.-]*:\/\/[^\s:@/"]*):[^\s@/"]+@/gi;
/** The inspector's query token in a URL that made it into a message. */
const QUERY_TOKEN = /([?&]token=)[^&\s"#]+/gi;
/** A bearer credential quoted in a message; 8+ characters so "Bearer token" stays as it is. */
const BEARER = /(\bBearer\s+)[\w.~+/=-]{8,}/g;
/** `password=...` in a key/value connection string. */
const PASSWORD_PAIR = /(password=)[^\s&;"]+/gi;
/**
 * A secret field at any depth, such as a connection config that a library
 * hung on its error: the serializers above only see the top level.
 */
const SECRET_FIELD = /("[\w-]*(?:password|token|authorization|cookie)":)"(?:[^"\\]|\\.)*"/gi;
/**
 * What a line must contain for SECRET_FIELD to match. Each is keyed on a
 * letter that is rare in log lines: `includes` scans for the first letter,
 * and `"secret":` (an `e`) took as long as the other four together.
 */
const SECRET_FIELD_HINTS = ['word":', 'oken":', 'zation":', 'kie":'];

/** A string as it appears inside a JSON line (quotes, backslashes and controls escaped). */
const inJson = (text: string) => JSON.stringify(text).slice(1, -1);

/**
 * The secrets of a configuration that must never reach a log line: the
 * database password, the API token and the password in RABBITMQ_URL, as
 * written there and decoded.
 */
export function secretsOf(config: Pick<Config, 'postgres' | 'rabbitmq' | 'http'>): string[] {
  const secrets = [config.postgres.password, config.http.apiToken ?? ''];
  try {
    const { password } = new URL(config.rabbitmq.url);
    secrets.push(password, decodeURIComponent(password));
  } catch {
    // config/env.ts has checked the URL; a bad escape leaves the raw form only
  }
  return secrets.filter((secret) => secret !== '');
}

/**
 * Returns a function that hides secrets in a serialized log line: credentials
 * in any URL, `token=` and `password=` values, `Bearer` credentials, secret
 * fields at any depth, and every given secret (as text, JSON-escaped and
 * percent-encoded). It works on the whole line, so a secret is hidden
 * wherever a library put it: an error's message, its stack, a property of
 * its cause. Each rule runs only after an `includes` scan for a string that
 * is rare in log lines finds one; a line with nothing to hide took about
 * 0.3 µs with three secrets (a pino info line: about 1 µs).
 */
export function createScrubber(secrets: readonly string[] = []): (line: string) => string {
  const forms = new Set<string>();
  for (const secret of secrets) {
    if (secret.length < MIN_SCRUBBED_LENGTH) continue;
    forms.add(inJson(secret));
    forms.add(inJson(encodeURIComponent(secret)));
  }
  // Longest first, so a secret that contains another is hidden whole.
  const exact = [...forms].sort((a, b) => b.length - a.length);

  return (line) => {
    let out = line;
    if (out.includes('@')) out = out.replace(URL_CREDENTIALS, `$1:${CENSOR}@`);
    if (out.includes('=')) {
      out = out.replace(QUERY_TOKEN, `$1${CENSOR}`).replace(PASSWORD_PAIR, `$1${CENSOR}`);
    }
    if (out.includes('Bearer')) out = out.replace(BEARER, `$1${CENSOR}`);
    if (SECRET_FIELD_HINTS.some((hint) => out.includes(hint))) {
      out = out.replace(SECRET_FIELD, `$1"${CENSOR}"`);
    }
    for (const form of exact) {
      if (out.includes(form)) out = out.replaceAll(form, CENSOR);
    }
    return out;
  };
}

type Destination = ReturnType<typeof pino.destination>;

/** Reports a failing log destination on stderr once, instead of crashing the service. */
function reportOnce(stream: Destination, what: string): void {
  let reported = false;
  stream.on('error', (err: Error) => {
    if (reported) return;
    reported = true;
    process.stderr.write(`log output ${what} failed: ${err.message}\n`);
  });
}

function fileSize(file: string): number {
  try {
    return fs.statSync(file).size;
  } catch {
    return 0;
  }
}

function renameIfPresent(from: string, to: string): void {
  try {
    fs.renameSync(from, to);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}

/**
 * A log file that rolls over by size, named as the earlier service's
 * (Python `RotatingFileHandler`) were: the active `scheduler.log`, then
 * `scheduler.log.1` (newest) to `scheduler.log.<backups>`. A line is never
 * split: the file rolls over before a line that would take it past
 * `maxBytes`, so each file holds at most `maxBytes` (or a single longer
 * line). With 0 backups the full file is removed and started afresh, so the
 * size limit still holds.
 *
 * Written through sonic-boom (pino's own destination) on a file descriptor
 * opened here: writes stay asynchronous and batched, and `flushSync` works at
 * once (on a path that is still opening it throws). A rolled-over stream
 * keeps writing what it had buffered into its renamed file.
 *
 * pino-roll was measured and not taken: it rolls only when its buffer
 * drains, so a 3.5 MB burst went into one file with a 1 MB limit; it keeps
 * `count` files beside the active one and only those it created itself, so
 * each restart left more; and its active file changes name on every roll.
 */
export class RotatingFile {
  private stream: Destination;
  private size: number;
  private readonly retiring = new Set<Promise<void>>();
  private closed = false;

  /**
   * @param file path of the active file; its folder is created when missing
   * @param maxBytes size at which the file rolls over
   * @param backups rolled-over files kept (0 keeps none)
   */
  constructor(
    readonly file: string,
    private readonly maxBytes: number,
    private readonly backups: number,
  ) {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    this.size = fileSize(file);
    if (this.size >= maxBytes) {
      this.shift();
      this.size = 0;
    }
    this.stream = this.open();
  }

  write(line: string): void {
    if (this.closed) return;
    const bytes = Buffer.byteLength(line);
    if (this.size > 0 && this.size + bytes > this.maxBytes) this.rollOver();
    this.size += bytes;
    this.stream.write(line);
  }

  /** Writes what is buffered now, blocking; for a process about to exit. */
  flushSync(): void {
    if (this.closed) return;
    try {
      this.stream.flushSync();
    } catch {
      // a write already failed and was reported; nothing more to save
    }
  }

  /** Writes out everything buffered and closes every file. Later lines are dropped. */
  async close(): Promise<void> {
    if (!this.closed) {
      this.closed = true;
      this.retire(this.stream);
    }
    await Promise.all([...this.retiring]);
  }

  private rollOver(): void {
    let next: Destination;
    try {
      this.shift();
      next = this.open();
    } catch (err) {
      // Keep the stream that works and try again one file's worth later.
      process.stderr.write(`log file ${this.file} cannot roll over: ${(err as Error).message}\n`);
      this.size = 0;
      return;
    }
    this.retire(this.stream);
    this.stream = next;
    this.size = 0;
  }

  /** Renames `.N-1` to `.N` ... the active file to `.1`; the oldest falls off. */
  private shift(): void {
    if (this.backups === 0) {
      fs.rmSync(this.file, { force: true });
      return;
    }
    for (let n = this.backups - 1; n >= 1; n--) {
      renameIfPresent(`${this.file}.${n}`, `${this.file}.${n + 1}`);
    }
    renameIfPresent(this.file, `${this.file}.1`);
  }

  private open(): Destination {
    const fd = fs.openSync(this.file, 'a');
    const stream = pino.destination({ dest: fd, sync: false });
    reportOnce(stream, this.file);
    return stream;
  }

  private retire(stream: Destination): void {
    const closed = new Promise<void>((resolve) => {
      stream.once('close', () => resolve());
      stream.once('error', () => resolve());
    });
    this.retiring.add(closed);
    void closed.then(() => this.retiring.delete(closed));
    stream.end();
  }
}

/** Turns a JSON line into a human-readable one. */
export type Prettifier = (line: string) => string;

/**
 * Loads pino-pretty, a development dependency: the production image has no
 * devDependencies, and there the console stays JSON (with a warning).
 */
export function loadPinoPretty(): Prettifier {
  const require = createRequire(import.meta.url);
  const { prettyFactory } = require('pino-pretty') as {
    prettyFactory(options: Record<string, unknown>): Prettifier;
  };
  return prettyFactory({ translateTime: 'SYS:HH:MM:ss.l', ignore: 'service' });
}

/** Where console lines go. */
export interface ConsoleOutput {
  write(line: string): unknown;
  flushSync?(): void;
}

export interface LoggerOptions {
  /** Values hidden wherever they appear in a line; see `secretsOf`. */
  secrets?: readonly string[];
  /** Fields on every line, beside `service`. */
  base?: Record<string, unknown>;
  /** Console destination; default stdout through sonic-boom. */
  console?: ConsoleOutput;
  /** How human-readable lines are made; default `loadPinoPretty`. */
  loadPretty?: () => Prettifier;
}

/** The service's logger and its outputs. */
export interface ServiceLogger {
  logger: Logger;
  /** Writes what is buffered now, blocking; for `process.exit`. */
  flushSync(): void;
  /** Writes out and closes the log files; console lines keep working. */
  close(): Promise<void>;
}

/**
 * The service's logger: pino JSON lines to stdout (LOG_CONSOLE), human-readable
 * there with LOG_PRETTY, NODE_ENV=development or LOG_JSON=false, and to a
 * rotating `<LOG_DIR>/scheduler.log` (always JSON, for log shippers). Every
 * line passes the scrubber of `createScrubber` before it reaches an output.
 * Throws a `ConfigError` naming LOG_DIR when the file cannot be opened.
 */
export function createLogger(config: Config['log'], options: LoggerOptions = {}): ServiceLogger {
  const scrub = createScrubber(options.secrets);
  const outputs: ConsoleOutput[] = [];
  let prettyMissing: Error | undefined;

  let stdout: ConsoleOutput | undefined;
  if (config.console) {
    stdout = options.console ?? pino.destination({ dest: 1, sync: false });
    let prettify: Prettifier | undefined;
    if (config.pretty || !config.json) {
      try {
        prettify = (options.loadPretty ?? loadPinoPretty)();
      } catch (err) {
        prettyMissing = err as Error;
      }
    }
    const out = stdout;
    outputs.push(prettify ? { write: (line) => out.write(prettify(line)) } : out);
  }

  let file: RotatingFile | undefined;
  if (config.dir) {
    const where = path.join(config.dir, LOG_FILE_NAME);
    try {
      file = new RotatingFile(where, config.maxFileSizeMb * 1024 * 1024, config.backupCount);
    } catch (err) {
      throw new ConfigError(`LOG_DIR: cannot write ${where}: ${(err as Error).message}`, {
        cause: err,
      });
    }
    outputs.push(file);
  }

  const sink = {
    write(line: string) {
      const clean = scrub(line);
      for (const output of outputs) output.write(clean);
    },
  };
  const logger = pino(
    {
      level: config.level,
      base: { service: 'job_scheduler', ...options.base },
      serializers: SERIALIZERS,
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    sink,
  );
  if (prettyMissing) {
    logger.warn(
      { reason: prettyMissing.message.split('\n')[0] },
      'pino-pretty is not installed (a development dependency); console lines stay JSON',
    );
  }

  const flushConsole = () => {
    try {
      stdout?.flushSync?.();
    } catch {
      // stdout is gone or still busy; the lines it holds cannot be saved
    }
  };
  return {
    logger,
    flushSync() {
      flushConsole();
      file?.flushSync();
    },
    async close() {
      flushConsole();
      await file?.close();
    },
  };
}

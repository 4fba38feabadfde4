import type { ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import type { SchedulerEventBus, TransitionEvent } from '../events.js';
import type { TransitionFilter, TransitionRow } from '../store/inspector-sql.js';

/**
 * Server-Sent Events for the inspector, written by hand: the stream must
 * never make the scheduler wait and must drop a client that falls behind.
 * better-sse (0.16) writes each message with `res.write` and ignores its
 * return value, so a client that stops reading piles up unbounded memory.
 */

/** A transition as the inspector shows it, on the stream and in a job's history. */
export interface TransitionView {
  id: string;
  job_id: string;
  job_type: string;
  from: string | null;
  to: string;
  event: string;
  attempt: number;
  at: string;
  detail: Record<string, unknown> | null;
}

export function viewOfEvent(e: TransitionEvent): TransitionView {
  return {
    id: e.id,
    job_id: e.jobId,
    job_type: e.jobType,
    from: e.from,
    to: e.to,
    event: e.event,
    attempt: e.attempt,
    at: new Date(e.at).toISOString(),
    detail: e.detail,
  };
}

export function viewOfRow(r: TransitionRow): TransitionView {
  return {
    id: r.id,
    job_id: r.job_id,
    job_type: r.job_type,
    from: r.from_state,
    to: r.to_state,
    event: r.event,
    attempt: r.attempt,
    at: new Date(r.at).toISOString(),
    detail: r.detail,
  };
}

/** One SSE message: `id`, `event` and `data` lines, then a blank line. */
export function formatMessage(event: string, data: string, id?: string): string {
  const idLine = id ? `id: ${id}\n` : '';
  const dataLines = data
    .split(/\r\n|\r|\n/)
    .map((line) => `data: ${line}\n`)
    .join('');
  return `${idLine}event: ${event}\n${dataLines}\n`;
}

/**
 * One open event stream. `send` never waits: while the socket does not take
 * more, messages queue here, and a queue longer than `maxBuffered` ends the
 * stream. What Node and the kernel hold besides is bounded by the socket's
 * own buffers, since nothing more is written until they drain.
 */
export class SseStream {
  private queue: string[] = [];
  private head = 0;
  private open = true;

  constructor(
    private readonly res: ServerResponse,
    private readonly maxBuffered: number,
    private readonly onOverflow: (buffered: number) => void,
  ) {
    res.on('drain', () => this.flush());
    res.on('close', () => {
      this.open = false;
      this.queue = [];
      this.head = 0;
    });
  }

  /** Sends the headers; `retryMs` is how long a browser waits before it reconnects. */
  start(retryMs: number): void {
    this.res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store, no-transform',
      connection: 'keep-alive',
      // Proxies such as nginx otherwise hold events back to fill their buffer.
      'x-accel-buffering': 'no',
    });
    this.res.write(`retry: ${retryMs}\n\n`);
  }

  get isOpen(): boolean {
    return this.open;
  }

  /** Messages waiting for the socket to drain. */
  get buffered(): number {
    return this.queue.length - this.head;
  }

  /** Writes or queues one message; ends the stream when the queue overflows. */
  send(message: string): void {
    if (!this.open) return;
    if (this.buffered === 0 && !this.res.writableNeedDrain) {
      this.res.write(message);
      return;
    }
    this.queue.push(message);
    if (this.buffered > this.maxBuffered) {
      const buffered = this.buffered;
      this.destroy();
      this.onOverflow(buffered);
    }
  }

  /** Writes one message and resolves once the socket takes more (or the stream ends). */
  async write(message: string): Promise<void> {
    this.send(message);
    if (!this.open || (this.buffered === 0 && !this.res.writableNeedDrain)) return;
    await new Promise<void>((resolve) => {
      const done = () => {
        this.res.off('drain', done);
        this.res.off('close', done);
        resolve();
      };
      this.res.on('drain', done);
      this.res.on('close', done);
    });
  }

  /** A comment line, which keeps proxies from closing an idle stream. */
  heartbeat(): void {
    if (this.buffered === 0 && !this.res.writableNeedDrain) this.send(': heartbeat\n\n');
  }

  /** Ends the stream cleanly, or at once when the client is not reading. */
  end(): void {
    if (!this.open) return;
    if (this.buffered > 0 || this.res.writableNeedDrain) this.destroy();
    else this.res.end();
  }

  destroy(): void {
    this.open = false;
    this.queue = [];
    this.head = 0;
    this.res.destroy();
  }

  private flush(): void {
    while (this.open && this.buffered > 0 && !this.res.writableNeedDrain) {
      const message = this.queue[this.head] as string;
      this.head += 1;
      this.res.write(message);
    }
    // Drop the sent part now and then rather than shifting on every message.
    if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.head);
      this.head = 0;
    }
  }
}

/** Transition ids from `from` to `to`, both included. */
export interface IdRange {
  from: bigint;
  to: bigint;
}

/**
 * Where a client's stream stands, sent as the SSE id of each message and read
 * back from Last-Event-ID: the highest transition id it was sent (`top`), and
 * the ids below that it may still be missing (`missing`, sorted ranges). As
 * text: `top`, or `top:from-to,id,…`. With nothing missing it is the id of the
 * last transition sent.
 */
export interface ResumePoint {
  top: bigint;
  missing: IdRange[];
}

/**
 * Ranges a resume point lists. Past this the lowest ones are merged, which
 * sends a reconnecting client again the transitions it had between them: a
 * duplicate (same transition id in the data), never a gap.
 */
const MAX_MISSING = 16;
const BIGINT_MAX = 2n ** 63n - 1n;

function normalize(ranges: IdRange[]): IdRange[] {
  const sorted = [...ranges].sort((a, b) => (a.from < b.from ? -1 : a.from > b.from ? 1 : 0));
  const merged: IdRange[] = [];
  for (const r of sorted) {
    const last = merged.at(-1);
    if (last && r.from <= last.to + 1n) {
      if (r.to > last.to) last.to = r.to;
    } else {
      merged.push({ ...r });
    }
  }
  return merged;
}

function inRanges(ranges: IdRange[], id: bigint): boolean {
  return ranges.some((r) => r.from <= id && id <= r.to);
}

/** The parts of sorted `ranges` above `id`. */
function above(ranges: IdRange[], id: bigint): IdRange[] {
  return ranges
    .filter((r) => r.to > id)
    .map((r) => (r.from > id ? r : { from: id + 1n, to: r.to }));
}

/** Sorted `ranges` without the single ids in `ids`. */
function without(ranges: IdRange[], ids: Iterable<bigint>): IdRange[] {
  let result = ranges;
  for (const id of ids) {
    if (!inRanges(result, id)) continue;
    result = result.flatMap((r) => {
      if (id < r.from || id > r.to) return [r];
      const parts: IdRange[] = [];
      if (r.from < id) parts.push({ from: r.from, to: id - 1n });
      if (id < r.to) parts.push({ from: id + 1n, to: r.to });
      return parts;
    });
  }
  return result;
}

export function formatResumePoint(point: ResumePoint): string {
  const missing = normalize(point.missing);
  while (missing.length > MAX_MISSING) {
    const [lowest, next] = missing as [IdRange, IdRange];
    missing.splice(0, 2, { from: lowest.from, to: next.to });
  }
  const ranges = missing.map((r) => (r.from === r.to ? `${r.from}` : `${r.from}-${r.to}`));
  return ranges.length > 0 ? `${point.top}:${ranges.join(',')}` : `${point.top}`;
}

const RESUME_POINT = /^(\d{1,19})(?::(\d{1,19}(?:-\d{1,19})?(?:,\d{1,19}(?:-\d{1,19})?)*))?$/;

/** A resume point from Last-Event-ID; null when it is not one this service writes. */
export function parseResumePoint(text: string): ResumePoint | null {
  const m = RESUME_POINT.exec(text);
  if (!m) return null;
  const top = BigInt(m[1] as string);
  const missing = (m[2] ?? '')
    .split(',')
    .filter((part) => part !== '')
    .map((part) => {
      const [from, to = from] = part.split('-') as [string, string?];
      return { from: BigInt(from), to: BigInt(to) };
    });
  const valid =
    top <= BIGINT_MAX &&
    missing.length <= MAX_MISSING &&
    missing.every((r) => r.from <= r.to && r.to <= top);
  return valid ? { top, missing: normalize(missing) } : null;
}

/** A transition id as a number; null for an event without one. */
function idOf(id: string): bigint | null {
  return /^\d{1,19}$/.test(id) ? BigInt(id) : null;
}

/**
 * How long a missing id below the highest one seen is waited for, in ms.
 * Transition ids come from one sequence, taken inside the statement that
 * writes the row, but reach the bus in commit order: a job's creation is
 * inserted on its own, outside the group commit, so its id can arrive after
 * higher ids of other jobs. Neither statement has a timeout; 30 s covers a
 * slow database with a wide margin. Past it the id is taken as one that never
 * comes here (a rolled-back write, another replica's row). Should it come after
 * all, it is still streamed, and logged: a client that reconnected in between
 * does not get it again.
 */
const LATE_ARRIVAL_MS = 30_000;
/**
 * Open gaps kept at most, oldest dropped first. Every transition does work in
 * proportion to them for every stream (on the commit path), and with another
 * replica writing, every other id is a gap that never closes here: 10,000 cost
 * 4-10 ms per transition per stream.
 */
const MAX_GAPS = 64;

/**
 * The ids that may still arrive on the bus: above the highest one seen, or in
 * a gap below it opened less than LATE_ARRIVAL_MS ago. The first id seen is the
 * base: what was in flight below it when it arrived is not waited for.
 */
class ArrivalGaps {
  private top: bigint | null = null;
  /** Sorted by `from`, hence also by `since` (each gap opens above the last). */
  private gaps: (IdRange & { since: number })[] = [];

  /** Records an arrival; false when the id was no longer waited for. */
  arrive(id: bigint): boolean {
    this.expire();
    if (this.top === null || id > this.top) {
      if (this.top !== null && id > this.top + 1n) {
        this.gaps.push({ from: this.top + 1n, to: id - 1n, since: performance.now() });
        if (this.gaps.length > MAX_GAPS) this.gaps.shift();
      }
      this.top = id;
      return true;
    }
    const i = this.gaps.findIndex((g) => g.from <= id && id <= g.to);
    const gap = this.gaps[i];
    if (!gap) return false;
    const rest: (IdRange & { since: number })[] = [];
    if (gap.from < id) rest.push({ ...gap, to: id - 1n });
    if (id < gap.to) rest.push({ ...gap, from: id + 1n });
    this.gaps.splice(i, 1, ...rest);
    return true;
  }

  /** Whether `id` has not arrived and still may. */
  mayArrive(id: bigint): boolean {
    this.expire();
    return this.top === null || id > this.top || inRanges(this.gaps, id);
  }

  /** The ids up to `upTo` that may still arrive, sorted. */
  open(upTo: bigint): IdRange[] {
    this.expire();
    const open = this.gaps
      .filter((g) => g.from <= upTo)
      .map((g) => ({ from: g.from, to: g.to < upTo ? g.to : upTo }));
    if (this.top !== null && upTo > this.top) open.push({ from: this.top + 1n, to: upTo });
    return open;
  }

  private expire(): void {
    const cutoff = performance.now() - LATE_ARRIVAL_MS;
    let expired = 0;
    while ((this.gaps[expired]?.since ?? Infinity) <= cutoff) expired += 1;
    if (expired > 0) this.gaps.splice(0, expired);
  }
}

/** Reads committed transitions after an id, for a client that reconnects. */
export type ReplayReader = (
  afterId: string,
  filter: TransitionFilter,
  limit: number,
) => Promise<TransitionRow[]>;

export interface TransitionStreamsOptions {
  bus: SchedulerEventBus;
  /** Messages one client may have queued before it is disconnected. */
  maxBuffered: number;
  /** Interval of the heartbeat comment on every stream, in ms. */
  heartbeatMs: number;
  logger: Logger;
  /** Reconnect delay a browser is told, in ms; default 1000. */
  retryMs?: number;
}

interface Client {
  stream: SseStream;
  filter: TransitionFilter;
  /** Live transitions (id, JSON) held back while the history is replayed; null once live. */
  held: { id: string; data: string }[] | null;
  /** The highest transition id sent, or that its resume point came with; null before any. */
  top: bigint | null;
  /** The missing ranges of the resume point it came with that the replay has not passed yet. */
  unscanned: IdRange[];
  /** Ids sent from the replay before they arrived on the bus: not sent again when they do. */
  early: Set<bigint>;
}

/** Rows read per replay query. */
const REPLAY_PAGE = 500;

export function matches(filter: TransitionFilter, e: TransitionEvent): boolean {
  return (
    (filter.jobIds.length === 0 || filter.jobIds.includes(e.jobId)) &&
    (filter.jobTypes.length === 0 || filter.jobTypes.includes(e.jobType)) &&
    (filter.states.length === 0 || filter.states.includes(e.to))
  );
}

/**
 * The inspector's live streams of transitions. One bus listener serves every
 * client; each client gets the transitions that pass its filter, in the order
 * they commit, which is not always id order (see LATE_ARRIVAL_MS): a
 * transition is never held back or dropped for an id below one already sent.
 *
 * So the SSE id of a message is the client's resume point, not the
 * transition's id (that is in the data): the highest id sent, plus the ids
 * below it that may still arrive. A client that reconnects with it first gets
 * from `job_transitions` what is above `top` or in a missing range, then the
 * live events held meanwhile, each once; a transition it had is not sent
 * again unless MAX_MISSING merged ranges.
 */
export class TransitionStreams {
  private readonly clients = new Set<Client>();
  private readonly gaps = new ArrivalGaps();
  private heartbeat: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(private readonly options: TransitionStreamsOptions) {
    options.bus.on('transition', this.onTransition);
  }

  /** Streams open now. */
  get size(): number {
    return this.clients.size;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /**
   * Starts a stream on `res` (headers sent here). With a resume point, what
   * came after it is replayed through `replay` first. Never throws once the
   * headers are out: a failed replay ends the stream and is logged.
   */
  async open(
    res: ServerResponse,
    filter: TransitionFilter,
    resume?: { from: ResumePoint; replay: ReplayReader },
  ): Promise<void> {
    const { logger, maxBuffered } = this.options;
    const stream = new SseStream(res, maxBuffered, (buffered) =>
      logger.warn({ buffered, max: maxBuffered }, 'inspector stream fell behind; disconnected'),
    );
    const client: Client = {
      stream,
      filter,
      held: resume ? [] : null,
      top: resume?.from.top ?? null,
      unscanned: resume?.from.missing ?? [],
      early: new Set(),
    };
    this.clients.add(client);
    res.on('close', () => {
      this.clients.delete(client);
      if (this.clients.size === 0) this.stopHeartbeat();
      logger.debug({ streams: this.clients.size }, 'inspector stream closed');
    });
    stream.start(this.options.retryMs ?? 1000);
    this.startHeartbeat();
    const from = resume && formatResumePoint(resume.from);
    logger.debug({ streams: this.clients.size, resume: from }, 'inspector stream');
    if (resume) await this.replay(client, resume.from, resume.replay);
  }

  /** Ends every stream and stops listening; streams asked for afterwards are refused. */
  close(): void {
    this.closed = true;
    this.options.bus.off('transition', this.onTransition);
    this.stopHeartbeat();
    for (const client of [...this.clients]) client.stream.end();
    this.clients.clear();
  }

  private async replay(client: Client, from: ResumePoint, read: ReplayReader): Promise<void> {
    const { stream } = client;
    const replayed = new Set<string>();
    try {
      let after = from.missing[0] ? from.missing[0].from - 1n : from.top;
      for (;;) {
        const rows = await read(String(after), client.filter, REPLAY_PAGE);
        for (const row of rows) {
          if (!stream.isOpen) return;
          const id = BigInt(row.id);
          client.unscanned = above(client.unscanned, id);
          // Between the missing ranges lie transitions the client had.
          if (id <= from.top && !inRanges(from.missing, id)) continue;
          replayed.add(row.id);
          if (this.gaps.mayArrive(id)) client.early.add(id);
          await stream.write(this.message(client, row.id, JSON.stringify(viewOfRow(row))));
        }
        const last = rows.at(-1);
        if (rows.length < REPLAY_PAGE || !last) break;
        after = BigInt(last.id);
      }
    } catch (err) {
      this.options.logger.error(
        { err, from: formatResumePoint(from) },
        'inspector stream replay failed',
      );
      stream.destroy();
      return;
    }
    client.unscanned = [];
    // Sent one by one off the list: the resume point counts those not yet sent as missing.
    const held = client.held ?? [];
    while (held.length > 0) {
      const { id, data } = held.shift() as { id: string; data: string };
      if (!replayed.has(id)) stream.send(this.message(client, id, data));
    }
    client.held = null;
  }

  /** A transition's message for one client, whose resume point it moves on. */
  private message(client: Client, id: string, data: string): string {
    const n = idOf(id);
    if (n !== null && (client.top === null || n > client.top)) client.top = n;
    return formatMessage('transition', data, this.resumePoint(client));
  }

  private resumePoint(client: Client): string | undefined {
    const top = client.top;
    if (top === null) return undefined;
    for (const id of client.early) if (!this.gaps.mayArrive(id)) client.early.delete(id);
    const held: IdRange[] = [];
    for (const h of client.held ?? []) {
      const id = idOf(h.id);
      if (id !== null && id <= top) held.push({ from: id, to: id });
    }
    const missing = normalize([...this.gaps.open(top), ...client.unscanned, ...held]);
    return formatResumePoint({ top, missing: without(missing, client.early) });
  }

  private readonly onTransition = (e: TransitionEvent): void => {
    const id = idOf(e.id);
    if (id !== null && !this.gaps.arrive(id)) {
      this.options.logger.warn(
        { transition_id: e.id, job_id: e.jobId, waited_ms: LATE_ARRIVAL_MS },
        'transition arrived after the inspector streams stopped waiting for its id',
      );
    }
    let data: string | undefined;
    for (const client of this.clients) {
      if (!matches(client.filter, e)) continue;
      if (id !== null && client.early.delete(id)) continue;
      data ??= JSON.stringify(viewOfEvent(e));
      if (client.held) {
        client.held.push({ id: e.id, data });
        if (client.held.length > this.options.maxBuffered) {
          this.options.logger.warn(
            { buffered: client.held.length, max: this.options.maxBuffered },
            'inspector stream fell behind during replay; disconnected',
          );
          client.held = [];
          client.stream.destroy();
        }
      } else {
        client.stream.send(this.message(client, e.id, data));
      }
    }
  };

  private startHeartbeat(): void {
    if (this.heartbeat || this.closed) return;
    this.heartbeat = setInterval(() => {
      for (const client of this.clients) if (!client.held) client.stream.heartbeat();
    }, this.options.heartbeatMs);
    this.heartbeat.unref();
  }

  private stopHeartbeat(): void {
    clearInterval(this.heartbeat);
    this.heartbeat = undefined;
  }
}

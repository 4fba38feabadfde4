import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, openSync, closeSync, readFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { eventually } from './harness.js';

export const OUTPUT_DIR = path.resolve('test-output');

/** A free TCP port on loopback. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

/** The real service as a child process (`node --import tsx src/main.ts`), logging to a file. */
export class ServiceProcess {
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  private constructor(
    readonly child: ChildProcess,
    readonly logFile: string,
    readonly baseUrl: string,
  ) {
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => resolve({ code, signal }));
    });
  }

  static async start(env: Record<string, string>, name: string): Promise<ServiceProcess> {
    mkdirSync(OUTPUT_DIR, { recursive: true });
    const port = env['PORT'] && env['PORT'] !== '0' ? Number(env['PORT']) : await freePort();
    const logFile = path.join(OUTPUT_DIR, `${name}.log`);
    const fd = openSync(logFile, 'w');
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
      env: { ...process.env, ...env, PORT: String(port), LOG_LEVEL: env['LOG_LEVEL'] ?? 'debug' },
      stdio: ['ignore', fd, fd],
    });
    closeSync(fd);
    return new ServiceProcess(child, logFile, `http://127.0.0.1:${port}`);
  }

  async ready(timeoutMs = 20_000): Promise<void> {
    await eventually(
      async () => {
        const response = await fetch(`${this.baseUrl}/health/ready`);
        return response.status === 200;
      },
      timeoutMs,
      `${this.logFile} to be ready`,
    );
  }

  logLines(): Record<string, unknown>[] {
    return readFileSync(this.logFile, 'utf8')
      .split('\n')
      .filter((line) => line.startsWith('{'))
      .map((line) => JSON.parse(line) as Record<string, unknown>);
  }

  /** SIGKILL, and wait until the process is gone. */
  async kill(): Promise<void> {
    this.child.kill('SIGKILL');
    await this.exited;
  }
}

/**
 * A TCP proxy in front of RabbitMQ whose broker-to-client direction can be
 * frozen: publishes still reach the broker, but no confirm comes back, as in a
 * network partition at the worst moment.
 */
export class FreezableProxy {
  port = 0;
  private frozen = false;
  private refusing = false;
  private readonly sockets = new Set<net.Socket>();
  private readonly server = net.createServer((client) => this.relay(client));

  private constructor(private readonly target: { host: string; port: number }) {}

  static async start(target: { host: string; port: number }): Promise<FreezableProxy> {
    const proxy = new FreezableProxy(target);
    await new Promise<void>((resolve) => proxy.server.listen(0, '127.0.0.1', resolve));
    proxy.port = (proxy.server.address() as net.AddressInfo).port;
    return proxy;
  }

  private relay(client: net.Socket): void {
    if (this.refusing) {
      client.destroy();
      return;
    }
    const upstream = net.connect(this.target.port, this.target.host);
    for (const socket of [client, upstream]) {
      this.sockets.add(socket);
      socket.on('error', () => {});
      socket.on('close', () => {
        this.sockets.delete(socket);
        client.destroy();
        upstream.destroy();
      });
    }
    client.on('data', (data) => upstream.write(data));
    upstream.on('data', (data) => {
      if (!this.frozen) client.write(data);
    });
  }

  freeze(): void {
    this.frozen = true;
  }

  /** Drops every connection and refuses new ones, as a broker that went away. */
  cut(): void {
    this.refusing = true;
    for (const socket of this.sockets) socket.destroy();
  }

  heal(): void {
    this.refusing = false;
  }

  async close(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

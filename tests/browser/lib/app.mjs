// Starting the real `clairon` binary for a test and talking to its API.
//
// Each App is one `clairon serve` process with every listener on 127.0.0.1:0;
// the ports are read from its stdout lines `clairon: <service> listening on
// http://<ip>:<port>`. Its stderr goes to a file whose tail is printed when
// the process fails to start (and by `dumpLogs()` when a test fails).

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
export const BIN = process.env.CLAIRON_BIN || join(ROOT, 'target/debug/clairon');
export const ADMIN_EMAIL = 'admin@clairon.test';
export const ADMIN_PASSWORD = 'browser-tests-admin-password';
const ALL = ['users', 'notifications', 'events', 'logs', 'web'];
const STARTUP_MS = 60_000;

export function newDataDir() {
  return mkdtempSync(join(tmpdir(), 'clairon-browser-'));
}

export class App {
  /**
   * @param {{services?: string[], env?: Record<string,string>, dataDir?: string, jwtSecret?: string}} [opts]
   */
  static async start(opts = {}) {
    const app = new App(opts);
    await app.#spawn();
    return app;
  }

  constructor(opts) {
    this.services = opts.services || ALL;
    this.ownDataDir = !opts.dataDir;
    this.dataDir = opts.dataDir || newDataDir();
    this.jwtSecret = opts.jwtSecret || randomBytes(48).toString('hex');
    this.extraEnv = opts.env || {};
    this.urls = {};
    this.logFile = join(this.dataDir, `clairon-${this.services.join('-')}.stderr.log`);
  }

  async #spawn() {
    const env = {};
    // Only this test's settings: nothing inherited from the shell can change the run.
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('CLAIRON_')) env[k] = v;
    Object.assign(env, {
      CLAIRON_DATA_DIR: this.dataDir,
      CLAIRON_USERS_ADDR: '127.0.0.1:0',
      CLAIRON_NOTIFICATIONS_ADDR: '127.0.0.1:0',
      CLAIRON_EVENTS_ADDR: '127.0.0.1:0',
      CLAIRON_LOGS_ADDR: '127.0.0.1:0',
      CLAIRON_WEB_ADDR: '127.0.0.1:0',
      CLAIRON_ADMIN_EMAIL: ADMIN_EMAIL,
      CLAIRON_ADMIN_PASSWORD: ADMIN_PASSWORD,
      CLAIRON_JWT_SECRET: this.jwtSecret,
      CLAIRON_SERVICES: this.services.join(','),
      CLAIRON_LOG: process.env.BROWSER_CLAIRON_LOG || 'info,sqlx=warn',
      CLAIRON_SHUTDOWN_GRACE_SECS: '5',
      ...this.extraEnv,
    });
    const err = createWriteStream(this.logFile);
    this.child = spawn(BIN, ['serve'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    this.child.stderr.pipe(err);
    this.exited = new Promise((res) => this.child.once('exit', (code, signal) => res({ code, signal })));
    const lines = createInterface({ input: this.child.stdout });
    const wanted = new Set(this.services);
    await new Promise((res, rej) => {
      const timer = setTimeout(() => rej(new Error(`clairon did not announce ${[...wanted].join(', ')} within ${STARTUP_MS} ms\n${this.logTail()}`)), STARTUP_MS);
      lines.on('line', (line) => {
        const m = /^clairon: (\w+) listening on (http:\/\/\S+)$/.exec(line.trim());
        if (!m) return;
        this.urls[m[1]] = m[2];
        wanted.delete(m[1]);
        if (wanted.size === 0) {
          clearTimeout(timer);
          res();
        }
      });
      this.exited.then(({ code, signal }) => {
        clearTimeout(timer);
        rej(new Error(`clairon exited (${code ?? signal}) before listening\n${this.logTail()}`));
      });
    });
    await this.waitReady();
  }

  /** Base URL of a service (`web` by default). */
  url(service = 'web') {
    const u = this.urls[service];
    if (!u) throw new Error(`${service} does not run in this process`);
    return u;
  }

  async waitReady() {
    const deadline = Date.now() + STARTUP_MS;
    for (const [name, base] of Object.entries(this.urls)) {
      for (;;) {
        try {
          const r = await fetch(`${base}/health/ready`);
          if (r.ok) break;
        } catch {
          // not yet
        }
        if (Date.now() > deadline) throw new Error(`${name} is not ready\n${this.logTail()}`);
        await sleep(100);
      }
    }
  }

  logTail(lines = 60) {
    try {
      // eslint-disable-next-line no-control-regex
      return readFileSync(this.logFile, 'utf8').replace(/\x1b\[[0-9;]*m/g, '').split('\n').slice(-lines).join('\n');
    } catch {
      return '(no log)';
    }
  }

  /** SIGTERM, then SIGKILL if it lingers. */
  async stop() {
    if (!this.child || this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill('SIGTERM');
    const t = setTimeout(() => this.child.kill('SIGKILL'), 10_000);
    await this.exited;
    clearTimeout(t);
  }

  cleanup() {
    if (this.ownDataDir && !process.env.KEEP_DATA) rmSync(this.dataDir, { recursive: true, force: true });
  }
}

export function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

/** Calls the API through the web gateway; throws on an unexpected status. */
export async function call(base, method, path, { token, body, expect } = {}) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (token) headers.Authorization = `Bearer ${token}`;
  const res = await fetch(`${base}${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  const data = text ? JSON.parse(text) : null;
  const ok = expect === undefined ? res.ok : (Array.isArray(expect) ? expect : [expect]).includes(res.status);
  if (!ok) throw new Error(`${method} ${path} answered ${res.status}: ${text}`);
  return { status: res.status, data, headers: res.headers };
}

export async function login(base, email, password) {
  const { data } = await call(base, 'POST', '/api/users/login', { body: { email, password } });
  return data;
}

export async function register(base, user) {
  const { data } = await call(base, 'POST', '/api/users/register', { body: user, expect: 201 });
  return data;
}

/** Polls `fn` until it returns a truthy value. */
export async function eventually(fn, { timeout = 20_000, every = 100, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; last: ${last instanceof Error ? last.message : JSON.stringify(last)}`);
    await sleep(every);
  }
}

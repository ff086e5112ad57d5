// Chromium through playwright-core: Debian's /usr/bin/chromium, headless,
// with nothing that reaches the network on its own.

import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

import { ADMIN_EMAIL, ADMIN_PASSWORD, ROOT } from './app.mjs';

export const SHOTS = join(ROOT, 'target/browser-screenshots');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

export async function launch() {
  mkdirSync(SHOTS, { recursive: true });
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
      '--disable-quic',
    ],
  });
}

/**
 * A fresh context (its own sessionStorage) and page, recording what a test
 * checks afterwards: JavaScript dialogs, page errors, console errors, and any
 * request that leaves the server under test.
 */
export async function openPage(browser, base, { viewport = { width: 1280, height: 900 } } = {}) {
  const context = await browser.newContext({ viewport, baseURL: base });
  const page = await context.newPage();
  const record = { dialogs: [], errors: [], console: [], foreign: [], sockets: [] };
  page.on('dialog', (d) => {
    record.dialogs.push(`${d.type()}: ${d.message()}`);
    d.dismiss().catch(() => {});
  });
  page.on('pageerror', (e) => record.errors.push(String(e)));
  page.on('console', (m) => {
    if (m.type() === 'error') record.console.push(m.text());
  });
  const origin = new URL(base).host;
  page.on('request', (r) => {
    const u = new URL(r.url());
    if (u.host !== origin && !u.protocol.startsWith('data')) record.foreign.push(r.url());
  });
  page.on('websocket', (ws) => record.sockets.push(ws.url()));
  return { context, page, record };
}

export async function shot(page, name) {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

/** Signs in through the form on `/`; resolves once the landing page is live. */
export async function signIn(page, email, password) {
  await page.goto('/');
  const form = page.locator('#login-form');
  await form.getByLabel('Email', { exact: true }).fill(email);
  await form.getByLabel('Password', { exact: true }).fill(password);
  await Promise.all([
    page.waitForURL((u) => u.pathname !== '/'),
    page.getByRole('button', { name: 'Sign in' }).click(),
  ]);
  await waitLive(page);
}

export async function signInAdmin(page) {
  await signIn(page, ADMIN_EMAIL, ADMIN_PASSWORD);
}

/** Waits until the page shows its WebSocket as live. */
export async function waitLive(page, timeout = 10_000) {
  await page.locator('#conn-state[data-conn-state="live"]').waitFor({ timeout });
}

export async function token(page) {
  return page.evaluate(() => JSON.parse(sessionStorage.getItem('clairon.session')).token);
}

// The web interface in a real browser, against the real binary (all five
// services in one process), with a local SMS gateway.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { ADMIN_EMAIL, ADMIN_PASSWORD, App, call, eventually, login } from './lib/app.mjs';
import { launch, openPage, shot, signIn, signInAdmin, token, waitLive } from './lib/browser.mjs';
import { SmsSink } from './lib/sms-sink.mjs';

const EVIL = '<img src=x onerror=alert(1)>';

describe('web interface', () => {
  let app;
  let sink;
  let browser;
  let base;
  let admin;
  const user = {
    email: `ada.${Date.now()}@example.com`,
    password: 'correct horse battery',
    firstName: 'Ada',
    lastName: 'Lovelace',
    phoneNumber: '+15551234567',
  };
  let userId;
  let u; // the user's browser session {context, page, record}
  let a; // the administrator's
  const sessions = [];

  /** Adds the server's log to a failure, so it says what happened there. */
  const withLogs = (fn) => async (t) => {
    try {
      await fn(t);
    } catch (e) {
      e.message += `\n--- clairon stderr (last lines) ---\n${app ? app.logTail(40) : ''}`;
      throw e;
    }
  };

  const open = async (opts) => {
    const s = await openPage(browser, base, opts);
    sessions.push(s);
    return s;
  };

  before(async () => {
    sink = await SmsSink.start();
    app = await App.start({
      env: {
        CLAIRON_SMS_URL: sink.url,
        // One attempt: a failing SMS is dead-lettered at once.
        CLAIRON_RETRY_MAX_ATTEMPTS: '1',
        CLAIRON_RETRY_INITIAL_BACKOFF_MS: '100',
      },
    });
    base = app.url('web');
    admin = await login(base, ADMIN_EMAIL, ADMIN_PASSWORD);
    browser = await launch();
  });

  after(async () => {
    await browser?.close();
    await app?.stop();
    await sink?.stop();
    app?.cleanup();
  });

  it('serves pages and assets with a strict CSP and nosniff', withLogs(async () => {
    for (const path of ['/', '/dashboard', '/notifications', '/monitoring', '/logs', '/assets/js/layout.js', '/assets/app.css']) {
      const res = await fetch(`${base}${path}`);
      assert.equal(res.status, 200, path);
      const csp = res.headers.get('content-security-policy') || '';
      assert.match(csp, /default-src 'self'/, path);
      assert.match(csp, /script-src 'self';/, path);
      assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/, path);
      assert.equal(res.headers.get('x-content-type-options'), 'nosniff', path);
    }
    const js = await fetch(`${base}/assets/js/layout.js`);
    assert.match(js.headers.get('content-type'), /^text\/javascript/);
    const missing = await fetch(`${base}/assets/nope.js`);
    assert.equal(missing.status, 404);
    assert.match(missing.headers.get('content-type'), /application\/problem\+json/);
  }));

  it('registers through the form; the inbox shows the welcome notification without a reload', withLogs(async () => {
    u = await open();
    const { page } = u;
    await page.goto('/');
    await shot(page, 'index-signed-out');
    const form = page.locator('#register-form');
    await form.getByLabel('First name').fill(user.firstName);
    await form.getByLabel('Last name').fill(user.lastName);
    await form.getByLabel('Email').fill(user.email);
    await form.getByLabel('Password').fill(user.password);
    await form.getByLabel(/Phone number/).fill(user.phoneNumber);
    const socket = page.waitForEvent('websocket', { timeout: 15_000 });
    await form.getByRole('button', { name: 'Create account' }).click();
    await page.waitForURL((url) => url.pathname === '/notifications');
    let navigations = 0;
    page.on('framenavigated', (f) => {
      if (f === page.mainFrame()) navigations += 1;
    });
    const ws = await socket;
    assert.equal(new URL(ws.url()).pathname, '/ws');
    assert.equal(new URL(ws.url()).search, '', `the socket URL carries no token: ${ws.url()}`);
    await page.locator('#inbox li', { hasText: 'Welcome to Clairon' }).waitFor({ timeout: 15_000 });
    await waitLive(page);
    assert.equal(navigations, 0, 'the welcome notification appeared without a reload');
    assert.equal(await page.locator('#unread-count').textContent(), '1 unread');
    assert.equal(await page.locator('#bell-count').textContent(), '1');
    userId = await page.evaluate(() => JSON.parse(sessionStorage.getItem('clairon.session')).userId);
    assert.match(userId, /^[0-9a-f-]{36}$/);
    await shot(page, 'notifications-user-inbox');
  }));

  it("shows an administrator's PUSH on the user's open page within a second", withLogs(async (t) => {
    a = await open();
    await signInAdmin(a.page);
    assert.equal(new URL(a.page.url()).pathname, '/dashboard');
    await a.page.goto('/notifications');
    await waitLive(a.page);
    const form = a.page.locator('#send-form');
    await form.getByLabel('Push').check();
    await form.getByLabel('Find a user').fill(user.email);
    await form.getByLabel('User', { exact: true }).selectOption(userId);
    const title = `Ping ${Date.now()}`;
    await form.getByLabel('Title').fill(title);
    await form.getByLabel('Message').fill('Are you there?');
    const clicked = Date.now();
    const [resp] = await Promise.all([
      a.page.waitForResponse((r) => new URL(r.url()).pathname === '/api/events/notifications' && r.request().method() === 'POST'),
      form.getByRole('button', { name: 'Send' }).click(),
    ]);
    assert.equal(resp.status(), 202);
    const accepted = Date.now();
    await u.page.locator('#inbox li', { hasText: title }).waitFor({ timeout: 5_000 });
    const shown = Date.now();
    t.diagnostic(`push shown ${shown - accepted} ms after the 202, ${shown - clicked} ms after the click`);
    assert.ok(shown - accepted <= 1000, `the push took ${shown - accepted} ms to show after the 202 (${shown - clicked} ms after the click)`);
    await u.page.locator('#toasts .toast', { hasText: title }).waitFor();
    assert.equal(await u.page.locator('#bell-count').textContent(), '2');
    assert.equal(await u.page.locator('#unread-count').textContent(), '2 unread');
    // The sender sees it in the list, with its status history.
    const row = a.page.locator('#list-body tr', { hasText: title });
    await row.locator('[data-cell="status"]', { hasText: 'SENT' }).waitFor({ timeout: 10_000 });
    await row.getByRole('button', { name: 'History' }).click();
    await a.page.locator('#list-body tr.detail li', { hasText: 'SENT' }).first().waitFor();
    await a.page.locator('#send-status', { hasText: 'Queued' }).waitFor();
    await shot(a.page, 'notifications-admin');
    // Mark as read, with the keyboard.
    const item = u.page.locator('#inbox li', { hasText: title });
    await item.getByRole('button', { name: 'Mark as read' }).focus();
    await u.page.keyboard.press('Enter');
    await u.page.locator('#unread-count', { hasText: '1 unread' }).waitFor();
    assert.equal(await item.getAttribute('data-unread'), 'false');
    assert.equal(await u.page.locator('#bell-count').textContent(), '1');
  }));

  it("moves the dashboard's counters and live tail when events are triggered through the API", withLogs(async () => {
    await a.page.goto('/dashboard');
    await waitLive(a.page);
    await a.page.locator('#counters[data-snapshot="received"]').waitFor();
    const num = async (sel) => Number((await a.page.locator(sel).textContent()).replace(/[^\d]/g, '') || 0);
    const totalBefore = await num('#count-total');
    const capturedBefore = await num('#count-captured');
    const stamp = `dashboard-check-${Date.now()}`;
    await call(base, 'POST', '/api/events/user-actions', {
      token: admin.accessToken,
      body: { userId, actionType: 'UPDATE_PROFILE', actionDetails: stamp },
      expect: 202,
    });
    await call(base, 'POST', '/api/events/notifications', {
      token: admin.accessToken,
      body: { userId, type: 'EMAIL', title: `Email ${stamp}`, message: 'Captured: no SMTP server in this test.' },
      expect: 202,
    });
    await a.page.locator('#tail li[data-event-type="UserActionPerformed"]', { hasText: stamp }).waitFor({ timeout: 10_000 });
    await a.page.locator('#tail li[data-event-type="NotificationTriggered"]', { hasText: stamp }).waitFor({ timeout: 10_000 });
    await eventually(async () => (await num('#count-total')) >= totalBefore + 3, { what: 'the event counter to move' });
    await eventually(async () => (await num('#count-captured')) > capturedBefore, { what: 'the CAPTURED counter to move' });
    assert.ok((await num('#count-minute')) >= 3);
    assert.ok(await a.page.locator('#chart-rate svg polyline').count() >= 1, 'the rate chart has lines');
    assert.ok(await a.page.locator('#chart-status svg rect').count() >= 5, 'the status chart has bars');
    await a.page.locator('#chart-latency svg polyline').first().waitFor();
    // A payload opens as text.
    const entry = a.page.locator('#tail li[data-event-type="UserActionPerformed"]', { hasText: stamp });
    await entry.locator('summary').click();
    await entry.locator('pre', { hasText: stamp }).waitFor();
    await shot(a.page, 'dashboard');
  }));

  it('renders a notification whose title is markup as text, and runs nothing', withLogs(async () => {
    await call(base, 'POST', '/api/events/notifications', {
      token: admin.accessToken,
      body: { userId, type: 'PUSH', title: EVIL, message: '<script>alert(2)</script><b>bold?</b>' },
      expect: 202,
    });
    const item = u.page.locator('#inbox li', { hasText: EVIL });
    await item.waitFor({ timeout: 5_000 });
    assert.equal(await item.locator('.title').textContent(), EVIL);
    assert.equal(await item.locator('.message').textContent(), '<script>alert(2)</script><b>bold?</b>');
    await u.page.locator('#toasts .toast', { hasText: EVIL }).waitFor();
    // On the dashboard's live tail too, and in the audit log's payload viewer.
    await a.page.locator('#tail li', { hasText: EVIL }).first().waitFor({ timeout: 10_000 });
    await a.page.goto('/logs');
    await waitLive(a.page);
    await a.page.getByLabel('Text in the payload').fill('onerror');
    await a.page.getByRole('button', { name: 'Search' }).click();
    const row = a.page.locator('#log-rows tr[data-event-type="NotificationTriggered"]').first();
    await row.waitFor({ timeout: 10_000 });
    await row.getByRole('button', { name: /View/ }).click();
    await a.page.locator('#payload-json', { hasText: EVIL }).waitFor();
    await shot(a.page, 'logs-payload-viewer');
    await a.page.keyboard.press('Escape');
    await a.page.locator('#payload-dialog').waitFor({ state: 'hidden' });
    for (const s of [u, a]) {
      assert.equal(await s.page.locator('img[src="x"], b').count(), 0, 'no element was made from the data');
    }
    await new Promise((r) => setTimeout(r, 500));
    assert.deepEqual(u.record.dialogs, [], 'no dialog opened on the user page');
    assert.deepEqual(a.record.dialogs, [], 'no dialog opened on the admin pages');
  }));

  it('filters the audit log, pages with the cursor and shows payloads', withLogs(async () => {
    // Enough events for more than one page of 25.
    for (let i = 0; i < 30; i += 1) {
      await call(base, 'POST', '/api/events/user-actions', {
        token: admin.accessToken,
        body: { userId, actionType: 'LOGIN', actionDetails: `paging ${i}` },
        expect: 202,
      });
    }
    await eventually(async () => (await call(base, 'GET', '/api/logs?q=paging%2029', { token: admin.accessToken })).data.items.length === 1, { what: 'the audit log to hold the new events' });
    await a.page.goto('/logs');
    await waitLive(a.page);
    await a.page.getByLabel('Event type').selectOption('UserActionPerformed');
    await a.page.getByLabel('Per page').selectOption('25');
    await a.page.getByRole('button', { name: 'Search' }).click();
    await a.page.locator('#page-info', { hasText: 'Page 1' }).waitFor();
    const types = await a.page.locator('#log-rows tr').evaluateAll((rows) => rows.map((r) => r.dataset.eventType));
    assert.ok(types.length >= 2, `rows: ${types}`);
    assert.ok(types.every((t) => t === 'UserActionPerformed'), `types: ${types}`);
    assert.match(a.page.url(), /eventType=UserActionPerformed/);
    assert.doesNotMatch(a.page.url(), /token/);
    // Every type, 25 a page: the cursor walks back in time and returns.
    await a.page.getByLabel('Event type').selectOption('');
    await a.page.getByRole('button', { name: 'Search' }).click();
    await a.page.locator('#page-info', { hasText: 'Page 1, 25 events' }).waitFor();
    const firstPage = await a.page.locator('#log-rows tr').evaluateAll((rows) => rows.map((r) => r.dataset.eventId));
    await a.page.getByRole('button', { name: 'Older' }).click();
    await a.page.locator('#page-info', { hasText: 'Page 2' }).waitFor();
    const secondPage = await a.page.locator('#log-rows tr').evaluateAll((rows) => rows.map((r) => r.dataset.eventId));
    assert.ok(secondPage.length > 0 && secondPage.every((id) => !firstPage.includes(id)), 'page 2 holds older events');
    await a.page.getByRole('button', { name: 'Newer' }).click();
    await a.page.locator('#page-info', { hasText: 'Page 1' }).waitFor();
    assert.deepEqual(await a.page.locator('#log-rows tr').evaluateAll((rows) => rows.map((r) => r.dataset.eventId)), firstPage);
    await shot(a.page, 'logs');
  }));

  it('replays a dead-lettered notification from the monitoring page, which then shows SENT', withLogs(async () => {
    sink.status = 500;
    const { data } = await call(base, 'POST', '/api/events/notifications', {
      token: admin.accessToken,
      body: { userId, type: 'SMS', title: 'Your code', message: 'Code 4321', recipient: '+15550001111' },
      expect: 202,
    });
    const id = data.notificationId;
    await eventually(async () => (await call(base, 'GET', `/api/notifications/${id}`, { token: admin.accessToken })).data.status === 'DEAD', { what: `${id} to be DEAD` });
    await a.page.goto('/monitoring');
    await waitLive(a.page);
    const row = a.page.locator(`#dead-letters tr[data-notification-id="${id}"]`);
    await row.waitFor({ timeout: 10_000 });
    await row.locator('[data-cell="status"]', { hasText: 'DEAD' }).waitFor();
    assert.match(await row.textContent(), /500/);
    await shot(a.page, 'monitoring-dead-letter');
    sink.status = 200;
    await row.getByRole('button', { name: /Replay/ }).click();
    await row.locator('[data-cell="status"]', { hasText: 'SENT' }).waitFor({ timeout: 15_000 });
    assert.ok(sink.received.some((r) => r.status === 200 && r.body.notificationId === id), 'the SMS reached the gateway');
    await a.page.locator('#dlq-status', { hasText: 'Replayed' }).waitFor();
  }));

  it('shows every service ready on the monitoring page, with the bus and its consumer lag', withLogs(async () => {
    await a.page.goto('/monitoring');
    await waitLive(a.page);
    await a.page.locator('#services .service').nth(4).waitFor();
    const services = await a.page.locator('#services .service').evaluateAll((els) => els.map((e) => [e.dataset.service, e.dataset.ready]));
    assert.deepEqual(services, [['users', 'true'], ['notifications', 'true'], ['events', 'true'], ['logs', 'true'], ['web', 'true']]);
    await a.page.locator('#topics tr[data-topic="notification-triggered"]').waitFor();
    await a.page.locator('#groups tr[data-group="notifications"]').first().waitFor();
    await a.page.locator('#groups tr[data-group="web-dashboard"]').first().waitFor();
    await a.page.locator('#kafka-ui', { hasText: 'No Kafka UI configured' }).waitFor();
    await a.page.locator('#checked-at', { hasText: 'every service is ready' }).waitFor();
    await shot(a.page, 'monitoring');
  }));

  it("keeps a plain user out of admin pages, and their API calls for others' data fail", withLogs(async () => {
    for (const path of ['/dashboard', '/monitoring', '/logs']) {
      await u.page.goto(path);
      await u.page.waitForURL((url) => url.pathname === '/notifications');
      await u.page.locator('#denied', { hasText: 'administrators only' }).waitFor();
    }
    await shot(u.page, 'notifications-user-denied');
    const { data: other } = await call(base, 'POST', '/api/events/notifications', {
      token: admin.accessToken,
      body: { userId: admin.userId, type: 'EMAIL', title: 'For the admin only', message: 'secret' },
      expect: 202,
    });
    await eventually(async () => (await call(base, 'GET', `/api/notifications/${other.notificationId}`, { token: admin.accessToken, expect: [200, 404] })).status === 200, { what: 'the admin notification to exist' });
    const t = await token(u.page);
    const statuses = await u.page.evaluate(async ({ t, adminId, otherId }) => {
      const go = async (method, path, body) => {
        const r = await fetch(path, {
          method,
          headers: { Authorization: `Bearer ${t}`, 'Content-Type': 'application/json' },
          body: body ? JSON.stringify(body) : undefined,
        });
        return [path, r.status];
      };
      return Promise.all([
        go('GET', '/api/logs'),
        go('GET', '/api/users'),
        go('GET', `/api/users/${adminId}`),
        go('GET', '/api/monitoring'),
        go('GET', '/api/notifications/dead-letters'),
        go('GET', `/api/notifications?userId=${adminId}`),
        go('GET', `/api/notifications/${otherId}`),
        go('POST', `/api/notifications/${otherId}/read`),
        go('POST', '/api/events/notifications', { userId: adminId, type: 'PUSH', title: 'x', message: 'y' }),
      ]);
    }, { t, adminId: admin.userId, otherId: other.notificationId });
    for (const [path, status] of statuses) {
      assert.ok([403, 404].includes(status), `${path} answered ${status} to a plain user`);
    }
    // And their own inbox holds only their own notifications.
    const own = await u.page.evaluate(async (t) => (await (await fetch('/api/notifications?limit=200', { headers: { Authorization: `Bearer ${t}` } })).json()).items.map((n) => n.userId), t);
    assert.ok(own.length > 0 && own.every((id) => id === userId));
  }));

  it('reconnects after a drop and shows the pushes sent meanwhile', withLogs(async () => {
    // Test-only hook on this context: keeps the page's sockets reachable so the
    // test can drop the connection the way a network failure would.
    await u.context.addInitScript(() => {
      const Native = window.WebSocket;
      window.__sockets = [];
      window.WebSocket = class extends Native {
        constructor(...args) {
          super(...args);
          window.__sockets.push(this);
        }
      };
    });
    await u.page.goto('/notifications');
    await waitLive(u.page);
    const title = `While offline ${Date.now()}`;
    try {
      await u.context.setOffline(true);
      await u.page.evaluate(() => window.__sockets.at(-1).close());
      await u.page.locator('#conn-state[data-conn-state="offline"]').waitFor({ timeout: 10_000 });
      await new Promise((r) => setTimeout(r, 300));
      await call(base, 'POST', '/api/events/notifications', {
        token: admin.accessToken,
        body: { userId, type: 'PUSH', title, message: 'Sent while the page was offline.' },
        expect: 202,
      });
      await new Promise((r) => setTimeout(r, 1500));
      assert.equal(await u.page.locator('#inbox li', { hasText: title }).count(), 0, 'nothing arrives while offline');
      assert.match(await u.page.locator('#conn-state').textContent(), /Offline/);
    } finally {
      await u.context.setOffline(false);
    }
    await waitLive(u.page, 30_000);
    await u.page.locator('#inbox li', { hasText: title }).waitFor({ timeout: 10_000 });
    await u.page.locator('#toasts .toast', { hasText: title }).waitFor();
    assert.ok(await u.page.evaluate(() => window.__sockets.length) >= 2, 'a new socket was opened');
  }));

  it('is readable at phone width', withLogs(async () => {
    const phone = { width: 390, height: 844 };
    const up = await open({ viewport: phone });
    await signIn(up.page, user.email, user.password);
    await up.page.locator('#inbox li').first().waitFor();
    const overflowU = await up.page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflowU <= 0, `the inbox is ${overflowU}px wider than the phone`);
    await shot(up.page, 'notifications-user-phone');
    const ap = await open({ viewport: phone });
    await signInAdmin(ap.page);
    await ap.page.locator('#counters[data-snapshot="received"]').waitFor();
    for (const [path, name] of [['/dashboard', 'dashboard-phone'], ['/notifications', 'notifications-admin-phone'], ['/monitoring', 'monitoring-phone'], ['/logs', 'logs-phone']]) {
      await ap.page.goto(path);
      await waitLive(ap.page);
      await new Promise((r) => setTimeout(r, 500));
      const overflow = await ap.page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      assert.ok(overflow <= 0, `${path} is ${overflow}px wider than the phone`);
      await shot(ap.page, name);
    }
  }));

  it('signs out: the token is revoked and the page returns to sign-in', withLogs(async () => {
    await u.page.goto('/notifications');
    await waitLive(u.page);
    const t = await token(u.page);
    await u.page.getByRole('button', { name: 'Sign out' }).click();
    await u.page.waitForURL((url) => url.pathname === '/');
    await u.page.locator('#login-form').waitFor();
    assert.equal(await u.page.evaluate(() => sessionStorage.getItem('clairon.session')), null);
    const res = await fetch(`${base}/api/users/me`, { headers: { Authorization: `Bearer ${t}` } });
    assert.equal(res.status, 401);
    await u.page.goto('/notifications');
    await u.page.waitForURL((url) => url.pathname === '/' && url.searchParams.get('next') === '/notifications');
    await shot(u.page, 'index-sign-in-required');
  }));

  it('made no request to another origin and raised no script error', () => {
    for (const s of sessions) {
      assert.deepEqual(s.record.foreign, [], 'requests to another origin');
      assert.deepEqual(s.record.errors, [], 'uncaught page errors');
      assert.deepEqual(s.record.dialogs, [], 'JavaScript dialogs');
      for (const url of s.record.sockets) assert.equal(new URL(url).search, '', `socket URL ${url}`);
    }
  });
});

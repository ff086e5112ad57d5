// Monitoring across processes: the web service alone, reaching the other
// services by URL (CLAIRON_*_URL), shows each one's readiness, and shows the
// one that stops as not ready.

import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { App, newDataDir } from './lib/app.mjs';
import { launch, openPage, shot, signInAdmin, waitLive } from './lib/browser.mjs';

const KAFKA_UI = 'http://127.0.0.1:9/kafka-ui/';

describe('monitoring with services in separate processes', () => {
  const dataDir = newDataDir();
  const jwtSecret = `browser-tests-${Date.now()}-shared-secret-of-enough-length`;
  let core;
  let logs;
  let web;
  let browser;

  before(async () => {
    core = await App.start({ services: ['users', 'notifications', 'events'], dataDir, jwtSecret });
    logs = await App.start({ services: ['logs'], dataDir, jwtSecret });
    web = await App.start({
      services: ['web'],
      dataDir,
      jwtSecret,
      env: {
        CLAIRON_USERS_URL: core.url('users'),
        CLAIRON_NOTIFICATIONS_URL: core.url('notifications'),
        CLAIRON_EVENTS_URL: core.url('events'),
        CLAIRON_LOGS_URL: logs.url('logs'),
        CLAIRON_KAFKA_UI_URL: KAFKA_UI,
      },
    });
    browser = await launch();
  });

  after(async () => {
    await browser?.close();
    for (const app of [web, logs, core]) await app?.stop();
    if (!process.env.KEEP_DATA) rmSync(dataDir, { recursive: true, force: true });
  });

  it('shows every service ready, then the stopped one as not ready', async () => {
    try {
      const { page, record } = await openPage(browser, web.url('web'));
      await signInAdmin(page);
      await page.goto('/monitoring');
      await waitLive(page);
      await page.locator('#services .service').nth(4).waitFor({ timeout: 15_000 });
      const ready = () => page.locator('#services .service').evaluateAll((els) => els.map((e) => [e.dataset.service, e.dataset.ready]));
      assert.deepEqual(await ready(), [['users', 'true'], ['notifications', 'true'], ['events', 'true'], ['logs', 'true'], ['web', 'true']]);
      assert.equal(await page.locator('#services .service[data-service="logs"] [data-field="url"]').textContent(), logs.url('logs'));
      assert.equal(await page.getByRole('link', { name: 'Open Kafka UI' }).getAttribute('href'), KAFKA_UI);

      await logs.stop();
      // The page is told by its socket (MONITORING frames), without a reload.
      await page.locator('#services .service[data-service="logs"][data-ready="false"]').waitFor({ timeout: 20_000 });
      assert.deepEqual(await ready(), [['users', 'true'], ['notifications', 'true'], ['events', 'true'], ['logs', 'false'], ['web', 'true']]);
      await page.locator('#checked-at', { hasText: 'not ready: logs' }).waitFor();
      assert.match(await page.locator('#services .service[data-service="logs"]').textContent(), /not ready/);
      await shot(page, 'monitoring-service-down');
      assert.deepEqual(record.errors, []);
      assert.deepEqual(record.foreign, []);
    } catch (e) {
      e.message += `\n--- web stderr ---\n${web?.logTail(30)}\n--- core stderr ---\n${core?.logTail(20)}`;
      throw e;
    }
  });
});

// `/monitoring` (administrators): each service's health and readiness, the
// event bus's topics and consumer-group lag, the dead letters with a replay
// button, and the Kafka UI link when one is configured. Health and bus figures
// arrive as MONITORING frames on the page's WebSocket every few seconds; the
// dead letters follow the live event feed.

import { api } from '/assets/js/api.js';
import { initPage } from '/assets/js/layout.js';
import { $, badge, debounce, fmtClock, fmtNumber, formStatus, h, shortId, timeEl } from '/assets/js/ui.js';

const dlq = {
  rows: new Map(), // notificationId → {tr, statusCell}
  ids: new Set(), // dead letter ids shown
  cursor: null,
};
let lastOverview = null;

function yesNo(ok, yes, no) {
  return h('span', { class: 'badge', 'data-status': ok ? 'UP' : 'DOWN' }, ok ? yes : no);
}

function renderServices(services) {
  const root = $('#services');
  if (!services || !services.length) {
    root.replaceChildren(h('p', { class: 'muted' }, 'No service to check is configured.'));
    return;
  }
  root.replaceChildren(...services.map((sv) => {
    const checks = sv.checks && typeof sv.checks === 'object' ? sv.checks : {};
    return h('article', { class: 'service', 'data-service': sv.name, 'data-ready': String(!!sv.ready), 'aria-label': `${sv.name}: ${sv.ready ? 'ready' : 'not ready'}` },
      h('h3', null, sv.name),
      h('p', { class: 'mono small wrap-any', 'data-field': 'url' }, sv.url),
      h('div', { class: 'row' },
        yesNo(sv.live, 'live', 'not live'),
        yesNo(sv.ready, 'ready', 'not ready')),
      h('dl', null,
        checks.database ? [h('dt', null, 'Database'), h('dd', null, checks.database)] : null,
        checks.bus ? [h('dt', null, 'Event bus'), h('dd', null, checks.bus, checks.busEngine ? ` (${checks.busEngine})` : '')] : null,
        sv.error ? [h('dt', null, 'Problem'), h('dd', null, sv.error)] : null,
        h('dt', null, 'Answered in'), h('dd', null, `${sv.latencyMs} ms`)));
  }));
}

const isRetry = (t) => /-retry-.+-\d+$/.test(t);

function renderBus(o) {
  const kafka = $('#kafka-ui');
  let url = null;
  try {
    const u = o.kafkaUiUrl ? new URL(o.kafkaUiUrl) : null;
    if (u && (u.protocol === 'http:' || u.protocol === 'https:')) url = u.href;
  } catch {
    url = null;
  }
  kafka.replaceChildren(url
    ? h('a', { href: url, target: '_blank', rel: 'noopener noreferrer' }, 'Open Kafka UI')
    : h('span', { class: 'muted' }, 'No Kafka UI configured (CLAIRON_KAFKA_UI_URL).'));
  const bus = o.bus;
  if (!bus) {
    $('#bus-engine').replaceChildren(h('span', { class: 'error' }, `The event bus could not be described: ${o.busError || 'unknown error'}`));
    $('#topics').replaceChildren();
    $('#groups').replaceChildren();
    return;
  }
  const showRetry = $('#show-retry').checked;
  const retryTopics = bus.topics.filter((t) => isRetry(t.name)).length;
  $('#bus-engine').textContent = `Engine: ${bus.engine === 'embedded' ? 'embedded durable log' : bus.engine}. `
    + `${bus.topics.length - retryTopics} topics and ${retryTopics} retry topics${showRetry ? '' : ' (hidden)'}, `
    + `${new Set(bus.groups.map((g) => g.group)).size} consumer groups.`;
  $('#topics').replaceChildren(...bus.topics.filter((t) => showRetry || !isRetry(t.name)).map((t) =>
    h('tr', { 'data-topic': t.name },
      h('td', { class: 'mono wrap-any' }, t.name),
      h('td', { class: 'num' }, String(t.endOffsets.length)),
      h('td', { class: 'num' }, fmtNumber(t.endOffsets.reduce((a, n) => a + n, 0))))));
  const byGroupTopic = new Map();
  for (const g of bus.groups) {
    if (!showRetry && isRetry(g.topic)) continue;
    const k = `${g.group}\u0000${g.topic}`;
    const cur = byGroupTopic.get(k) || { group: g.group, topic: g.topic, committed: 0, lag: 0 };
    cur.committed += g.committed;
    cur.lag += g.lag;
    byGroupTopic.set(k, cur);
  }
  $('#groups').replaceChildren(...[...byGroupTopic.values()].map((g) =>
    h('tr', { 'data-group': g.group, 'data-topic': g.topic },
      h('td', { class: 'mono wrap-any' }, g.group),
      h('td', { class: 'mono wrap-any' }, g.topic),
      h('td', { class: 'num' }, fmtNumber(g.committed)),
      h('td', { class: 'num', 'data-lag': String(g.lag) }, g.lag > 0 ? h('strong', null, fmtNumber(g.lag)) : '0'))));
}

function renderOverview(o) {
  lastOverview = o;
  renderServices(o.services);
  renderBus(o);
  const down = (o.services || []).filter((sv) => !sv.ready).map((sv) => sv.name);
  $('#checked-at').textContent = `Checked at ${fmtClock(o.checkedAt)}${down.length ? ` — not ready: ${down.join(', ')}` : ' — every service is ready'}.`;
}

async function checkNow() {
  try {
    renderOverview(await api('/api/monitoring'));
  } catch (e) {
    $('#checked-at').textContent = `Check failed: ${e.message}`;
  }
}

// ---------------------------------------------------------------- dead letters

function dlRow(d) {
  const statusCell = h('td', { 'data-cell': 'status' }, d.notificationId ? h('span', { class: 'muted' }, '…') : '—');
  const replay = h('button', { type: 'button', class: 'small', 'data-action': 'replay' }, 'Replay');
  const replayed = h('span', { class: 'small muted' }, d.replayedAt ? ['Replayed ', timeEl(d.replayedAt)] : '');
  replay.hidden = !!d.replayedAt;
  const tr = h('tr', { 'data-dead-letter-id': d.id, 'data-notification-id': d.notificationId || '' },
    h('td', null, timeEl(d.createdAt)),
    h('td', { class: 'mono wrap-any hide-narrow' }, d.topic),
    h('td', { class: 'mono', title: d.notificationId || '' }, d.notificationId ? shortId(d.notificationId) : '—'),
    h('td', { class: 'wrap-any' }, d.reason),
    h('td', { class: 'num hide-narrow' }, String(d.attempts)),
    statusCell,
    h('td', null, replay, replayed));
  replay.setAttribute('aria-label', `Replay the dead letter of ${d.notificationId || d.id}`);
  replay.addEventListener('click', async () => {
    replay.disabled = true;
    try {
      await api(`/api/notifications/dead-letters/${encodeURIComponent(d.id)}/replay`, { method: 'POST' });
      replay.hidden = true;
      replayed.replaceChildren('Replayed just now');
      if (d.notificationId) statusCell.replaceChildren(badge('PENDING'));
      formStatus($('#dlq-status'), 'ok', `Replayed ${d.notificationId ? `notification ${d.notificationId}` : d.id}.`);
    } catch (e) {
      replay.disabled = false;
      formStatus($('#dlq-status'), 'error', `Replay failed: ${e.message}`);
    }
  });
  if (d.notificationId) {
    dlq.rows.set(d.notificationId, { tr, statusCell });
    api(`/api/notifications/${encodeURIComponent(d.notificationId)}`)
      .then((n) => statusCell.replaceChildren(badge(n.status)))
      .catch(() => statusCell.replaceChildren(h('span', { class: 'muted' }, 'unknown')));
  }
  return tr;
}

async function loadDeadLetters(reset) {
  try {
    const res = await api('/api/notifications/dead-letters', { query: { limit: 50, cursor: reset ? null : dlq.cursor } });
    const body = $('#dead-letters');
    if (reset) {
      body.replaceChildren();
      dlq.rows.clear();
      dlq.ids.clear();
    }
    for (const d of res.items || []) {
      if (dlq.ids.has(d.id)) continue;
      dlq.ids.add(d.id);
      body.append(dlRow(d));
    }
    dlq.cursor = res.nextCursor;
    $('#dlq-more').hidden = !dlq.cursor;
    if (!body.children.length) formStatus($('#dlq-status'), '', 'No dead letter. Everything was delivered or is still being retried.');
    else if ($('#dlq-status').dataset.kind !== 'ok') formStatus($('#dlq-status'), '', '');
  } catch (e) {
    formStatus($('#dlq-status'), 'error', e.message);
  }
}

const reloadDeadLetters = debounce(() => loadDeadLetters(true), 400);

function onFrame(f) {
  if (f.type === 'MONITORING') {
    renderOverview(f);
  } else if (f.type === 'EVENT') {
    const p = f.payload || {};
    if (f.deadLetter) {
      reloadDeadLetters();
    } else if (f.eventType === 'NotificationStatusChanged' && p.notificationId) {
      const r = dlq.rows.get(p.notificationId);
      if (r) r.statusCell.replaceChildren(badge(p.status));
      if (p.status === 'DEAD') reloadDeadLetters();
    }
  }
}

const page = initPage({
  path: '/monitoring',
  adminOnly: true,
  onFrame,
  onOpen: ({ reconnect }, live) => {
    live.send({ type: 'WATCH', what: 'monitoring' });
    if (reconnect) loadDeadLetters(true);
  },
});

if (page) {
  checkNow();
  loadDeadLetters(true);
  $('#refresh').addEventListener('click', checkNow);
  $('#dlq-more').addEventListener('click', () => loadDeadLetters(false));
  $('#show-retry').addEventListener('change', () => lastOverview && renderBus(lastOverview));
}

// `/dashboard` (administrators): live counters, charts and the event tail,
// all from the page's WebSocket: a SNAPSHOT when it opens, an EVENT frame per
// event and STATS frames with the server's figures. Nothing is polled.

import { barChart, lineChart, PALETTE, STATUS_COLORS } from '/assets/js/charts.js';
import { initPage } from '/assets/js/layout.js';
import { $, debounce, fmtClock, fmtNumber, fmtTime, h, jsonText, shortId } from '/assets/js/ui.js';

const WINDOW_SECS = 60;
const TAIL_MAX = 100;
const EVENT_TYPES = ['UserRegistered', 'NotificationTriggered', 'NotificationStatusChanged', 'PushRequested', 'UserActionPerformed', 'DeadLettered'];
const CHANNELS = ['EMAIL', 'SMS', 'PUSH'];
const STATUSES = ['PENDING', 'SENT', 'CAPTURED', 'FAILED', 'DEAD'];

const state = {
  since: null,
  totals: {},
  statuses: [],
  latency: { count: 0, p50: null, p95: null, recent: [] },
  /** second → {series: count} */
  perSecond: new Map(),
  lastSecond: 0,
  seen: new Set(),
  paused: false,
  held: [],
};

const colorOf = (series) => PALETTE[Math.max(0, EVENT_TYPES.indexOf(series)) % PALETTE.length];
const seriesOf = (f) => (f.deadLetter ? 'DeadLettered' : f.eventType);
const secondOf = (iso) => Math.floor(new Date(iso).getTime() / 1000);

function count(second, series, n = 1) {
  if (!Number.isFinite(second)) return;
  let m = state.perSecond.get(second);
  if (!m) {
    m = {};
    state.perSecond.set(second, m);
  }
  m[series] = (m[series] || 0) + n;
  state.lastSecond = Math.max(state.lastSecond, second);
}

function windowEnd() {
  return Math.max(Math.floor(Date.now() / 1000), state.lastSecond);
}

function prune() {
  const oldest = windowEnd() - WINDOW_SECS * 2;
  for (const k of state.perSecond.keys()) if (k < oldest) state.perSecond.delete(k);
}

function summary(f) {
  const p = f.payload && typeof f.payload === 'object' ? f.payload : {};
  switch (f.eventType) {
    case 'UserRegistered':
      return `${p.email || 'someone'} registered`;
    case 'NotificationTriggered':
      return `${p.type || ''} “${p.title || ''}”`;
    case 'NotificationStatusChanged':
      return `${p.type || ''} → ${p.status || ''} (attempt ${p.attempt ?? '?'})${p.reason ? `: ${p.reason}` : ''}`;
    case 'PushRequested':
      return `PUSH “${p.title || ''}”`;
    case 'UserActionPerformed':
      return `${p.actionType || ''}${p.actionDetails ? `: ${p.actionDetails}` : ''}`;
    default:
      return f.topic;
  }
}

function tailItem(f) {
  return h('li', { 'data-event-type': f.eventType, 'data-event-id': f.eventId },
    h('div', { class: 'line' },
      h('time', { datetime: f.at, title: fmtTime(f.at) }, fmtClock(f.at)),
      h('span', { class: 'badge type' }, f.eventType),
      f.deadLetter ? h('span', { class: 'badge dlt' }, 'dead letter') : null,
      h('span', { class: 'summary' }, summary(f)),
      h('span', { class: 'muted small', title: f.userId }, `user ${shortId(f.userId)}`)),
    f.error ? h('div', { class: 'small muted' }, 'Reason: ', f.error) : null,
    h('details', null, h('summary', null, 'Payload'),
      h('p', { class: 'small muted' }, `Topic ${f.topic}, event ${f.eventId}`),
      h('pre', null, jsonText(f.payload))));
}

function addToTail(frames) {
  const list = $('#tail');
  for (const f of frames) list.prepend(tailItem(f));
  while (list.children.length > TAIL_MAX) list.lastElementChild.remove();
  $('#tail-empty').hidden = list.children.length > 0;
}

function onEvent(f) {
  if (f.eventId && state.seen.has(f.eventId)) return;
  if (f.eventId) {
    state.seen.add(f.eventId);
    if (state.seen.size > 5000) state.seen = new Set([...state.seen].slice(-2500));
  }
  const series = seriesOf(f);
  count(secondOf(f.at), series);
  // Counted at once here; the next STATS frame brings the server's figures.
  state.totals[series] = (state.totals[series] || 0) + 1;
  if (state.paused) {
    state.held.push(f);
    $('#tail-pause').textContent = `Resume (${state.held.length} new)`;
  } else {
    addToTail([f]);
  }
  renderCounters();
}

function applyStats(st) {
  if (!st) return;
  state.since = st.since;
  state.totals = { ...(st.totals || {}) };
  state.statuses = st.statuses || [];
  state.latency = st.latency || state.latency;
  renderCounters();
  renderStatusChart();
  renderLatencyChart();
}

function applySnapshot(f) {
  state.perSecond.clear();
  for (const ps of f.perSecond || []) {
    for (const [series, n] of Object.entries(ps.counts || {})) count(ps.second, series, n);
  }
  const fresh = (f.tail || []).filter((e) => !e.eventId || !state.seen.has(e.eventId));
  for (const e of fresh) if (e.eventId) state.seen.add(e.eventId);
  addToTail(fresh);
  applyStats(f.stats);
  renderRateChart();
  $('#counters').dataset.snapshot = 'received';
}

function statusTotal(status) {
  return state.statuses.filter((x) => x.status === status).reduce((a, x) => a + x.count, 0);
}

function renderCounters() {
  const total = Object.values(state.totals).reduce((a, n) => a + n, 0);
  $('#count-total').textContent = fmtNumber(total);
  const end = windowEnd();
  const last = state.perSecond.get(end - 1) || {};
  $('#count-rate').textContent = fmtNumber(Object.values(last).reduce((a, n) => a + n, 0));
  let minute = 0;
  for (let t = end - WINDOW_SECS + 1; t <= end; t += 1) {
    minute += Object.values(state.perSecond.get(t) || {}).reduce((a, n) => a + n, 0);
  }
  $('#count-minute').textContent = fmtNumber(minute);
  $('#count-sent').textContent = fmtNumber(statusTotal('SENT'));
  $('#count-captured').textContent = fmtNumber(statusTotal('CAPTURED'));
  $('#count-failed').textContent = `${fmtNumber(statusTotal('FAILED'))} / ${fmtNumber(statusTotal('DEAD'))}`;
  const l = state.latency;
  $('#count-latency').textContent = l && l.p50 !== null && l.p50 !== undefined ? `${l.p50} / ${l.p95} ms` : '—';
  if (state.since) $('#since').textContent = `Figures since ${fmtTime(state.since)} (web service start).`;
}

function renderRateChart() {
  prune();
  const end = windowEnd();
  const seconds = [];
  for (let t = end - WINDOW_SECS + 1; t <= end; t += 1) seconds.push(t);
  const present = new Set(Object.keys(state.totals));
  for (const m of state.perSecond.values()) for (const k of Object.keys(m)) present.add(k);
  const names = EVENT_TYPES.filter((t) => present.has(t)).concat([...present].filter((t) => !EVENT_TYPES.includes(t)));
  const series = (names.length ? names : ['UserRegistered']).map((name) => ({
    name,
    color: colorOf(name),
    values: seconds.map((t) => (state.perSecond.get(t) || {})[name] || 0),
  }));
  lineChart($('#chart-rate'), {
    label: 'Events per second by type over the last minute',
    series,
    xLabels: seconds.map((t, i) => (i === seconds.length - 1 ? 'now' : `-${end - t}s`)),
    yUnit: '/s',
  });
}

function renderStatusChart() {
  const value = (channel, status) => {
    const row = state.statuses.find((x) => x.channel === channel && x.status === status);
    return row ? row.count : 0;
  };
  barChart($('#chart-status'), {
    label: `Notifications by status and channel: ${CHANNELS.map((c) => `${c} ${STATUSES.map((st) => `${st} ${value(c, st)}`).join(', ')}`).join('; ')}`,
    categories: CHANNELS,
    series: STATUSES.map((st) => ({ name: st, color: STATUS_COLORS[st] })),
    value,
  });
}

function renderLatencyChart() {
  const l = state.latency || {};
  const recent = (l.recent || []).slice(-120);
  const extra = [];
  if (l.p50 !== null && l.p50 !== undefined) extra.push({ value: l.p50, label: `p50 ${l.p50} ms`, color: '#15803d' });
  if (l.p95 !== null && l.p95 !== undefined) extra.push({ value: l.p95, label: `p95 ${l.p95} ms`, color: '#c2410c' });
  lineChart($('#chart-latency'), {
    label: `Delivery latency of the last ${recent.length} deliveries; p50 ${l.p50 ?? '—'} ms, p95 ${l.p95 ?? '—'} ms`,
    series: [{ name: 'latency (ms)', color: '#4338ca', values: recent.map((r) => r.ms) }],
    xLabels: recent.length ? [fmtClock(recent[0].at), ...recent.slice(1, -1).map(() => ''), fmtClock(recent[recent.length - 1].at)].slice(0, recent.length) : [],
    yUnit: 'ms',
    extraLines: extra,
  });
  $('#latency-note').textContent = l.count
    ? `From trigger to SENT or CAPTURED, last ${l.count} deliveries (max ${l.max} ms).`
    : 'From trigger to SENT or CAPTURED. No delivery yet.';
}

$('#tail-pause').addEventListener('click', (e) => {
  state.paused = !state.paused;
  e.currentTarget.setAttribute('aria-pressed', String(state.paused));
  if (!state.paused) {
    addToTail(state.held.splice(0));
    e.currentTarget.textContent = 'Pause';
  } else {
    e.currentTarget.textContent = 'Resume';
  }
});

const page = initPage({
  path: '/dashboard',
  adminOnly: true,
  onFrame: (f) => {
    if (f.type === 'EVENT') onEvent(f);
    else if (f.type === 'STATS') applyStats(f);
    else if (f.type === 'SNAPSHOT') applySnapshot(f);
  },
});

if (page) {
  renderCounters();
  renderRateChart();
  renderStatusChart();
  renderLatencyChart();
  window.addEventListener('resize', debounce(() => {
    renderRateChart();
    renderStatusChart();
    renderLatencyChart();
  }, 150));
  // The time axis moves every second; the data only ever comes from the socket.
  setInterval(() => {
    renderRateChart();
    renderCounters();
  }, 1000);
}

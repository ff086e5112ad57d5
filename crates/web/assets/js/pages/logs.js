// `/logs` (administrators): the audit log with filters (type, user, time
// range, text), cursor paging and a payload viewer. The filters are kept in
// the page's address (they are not secret) so a search can be shared or reloaded.

import { api } from '/assets/js/api.js';
import { initPage } from '/assets/js/layout.js';
import { $, clearFieldErrors, fmtTime, formStatus, h, jsonText, shortId, showFieldErrors, timeEl } from '/assets/js/ui.js';

const FIELDS = ['eventType', 'userId', 'from', 'to', 'q', 'limit'];

const state = {
  query: {},
  /** Cursors of the pages before the current one; the current one's cursor last. */
  cursors: [null],
  next: null,
  newSince: 0,
};

function localToIso(v) {
  if (!v) return '';
  const d = new Date(v);
  return Number.isNaN(d.getTime()) ? '' : d.toISOString();
}

function isoToLocal(v) {
  const d = new Date(v);
  if (!v || Number.isNaN(d.getTime())) return '';
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function readForm(form) {
  return {
    eventType: form.eventType.value,
    userId: form.userId.value.trim(),
    from: localToIso(form.from.value),
    to: localToIso(form.to.value),
    q: form.q.value.trim(),
    limit: form.limit.value,
  };
}

function fillForm(form, q) {
  form.eventType.value = q.eventType || '';
  form.userId.value = q.userId || '';
  form.from.value = isoToLocal(q.from);
  form.to.value = isoToLocal(q.to);
  form.q.value = q.q || '';
  form.limit.value = q.limit || '50';
}

function keepInAddress(q) {
  const p = new URLSearchParams();
  for (const k of FIELDS) if (q[k]) p.set(k, q[k]);
  const qs = p.toString();
  history.replaceState(null, '', qs ? `/logs?${qs}` : '/logs');
}

function showEntry(e) {
  $('#payload-title').textContent = `${e.eventType} — ${fmtTime(e.occurredAt)}`;
  $('#payload-body').replaceChildren(
    h('dl', { class: 'small' },
      h('dt', null, 'Event id'), h('dd', { class: 'mono' }, e.eventId),
      h('dt', null, 'Topic'), h('dd', { class: 'mono' }, `${e.topic} · partition ${e.partition} · offset ${e.offset}`),
      h('dt', null, 'Key'), h('dd', { class: 'mono' }, e.key),
      h('dt', null, 'User'), h('dd', { class: 'mono' }, e.userId || '—'),
      h('dt', null, 'Recorded'), h('dd', null, fmtTime(e.recordedAt)),
      e.error ? [h('dt', null, 'Dead-letter reason'), h('dd', null, e.error)] : null),
    h('h3', null, 'Payload'),
    h('pre', { id: 'payload-json' }, jsonText(e.payload)),
    h('h3', null, 'Headers'),
    h('pre', null, jsonText(e.headers)));
  $('#payload-dialog').showModal();
  $('#payload-close').focus();
}

function logRow(e) {
  const view = h('button', { type: 'button', class: 'secondary small' }, 'View');
  view.setAttribute('aria-label', `View the ${e.eventType} event of ${fmtTime(e.occurredAt)}`);
  view.addEventListener('click', () => showEntry(e));
  return h('tr', { 'data-event-id': e.eventId, 'data-event-type': e.eventType },
    h('td', null, timeEl(e.occurredAt)),
    h('td', null, h('span', { class: 'badge type' }, e.eventType), e.deadLetter ? [' ', h('span', { class: 'badge dlt' }, 'dead letter')] : null),
    h('td', { class: 'mono', title: e.userId || '' }, e.userId ? shortId(e.userId) : '—'),
    h('td', { class: 'mono wrap-any hide-narrow' }, e.topic),
    h('td', { class: 'mono hide-narrow' }, `${e.partition}:${e.offset}`),
    h('td', null, view));
}

async function load() {
  const status = $('#log-status');
  const form = $('#log-filters');
  clearFieldErrors(form);
  formStatus(status, '', 'Loading…');
  const cursor = state.cursors[state.cursors.length - 1];
  try {
    const res = await api('/api/logs', { query: { ...state.query, cursor } });
    $('#log-rows').replaceChildren(...(res.items || []).map(logRow));
    state.next = res.nextCursor;
    $('#older').disabled = !state.next;
    $('#newer').disabled = state.cursors.length <= 1;
    $('#page-info').textContent = `Page ${state.cursors.length}, ${res.items.length} event${res.items.length === 1 ? '' : 's'}.`;
    formStatus(status, '', res.items.length ? '' : 'No event matches these filters.');
    if (state.cursors.length === 1) {
      state.newSince = 0;
      $('#new-events').hidden = true;
    }
  } catch (e) {
    showFieldErrors(form, e);
    formStatus(status, 'error', e.message);
  }
}

const page = initPage({
  path: '/logs',
  adminOnly: true,
  onFrame: (f) => {
    // New events are not pushed into the page being read; a button offers them.
    if (f.type !== 'EVENT') return;
    state.newSince += 1;
    const b = $('#new-events');
    b.textContent = `Show ${state.newSince} new event${state.newSince === 1 ? '' : 's'}`;
    b.hidden = false;
  },
});

if (page) {
  const form = $('#log-filters');
  const initial = Object.fromEntries(new URLSearchParams(location.search));
  fillForm(form, initial);
  state.query = readForm(form);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    state.query = readForm(form);
    state.cursors = [null];
    keepInAddress(state.query);
    load();
  });
  form.addEventListener('reset', () => {
    setTimeout(() => {
      state.query = readForm(form);
      state.cursors = [null];
      keepInAddress(state.query);
      load();
    });
  });
  $('#older').addEventListener('click', () => {
    if (!state.next) return;
    state.cursors.push(state.next);
    load();
  });
  $('#newer').addEventListener('click', () => {
    if (state.cursors.length > 1) state.cursors.pop();
    load();
  });
  $('#new-events').addEventListener('click', () => {
    state.cursors = [null];
    load();
  });
  $('#payload-close').addEventListener('click', () => $('#payload-dialog').close());
  load();
}

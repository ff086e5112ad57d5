// `/notifications`: a user's inbox (unread count, mark as read, new PUSH
// notifications arriving live with a toast and the bell), or, for an
// administrator, the send form and the list of every notification with its
// status history, kept current from the live event feed.

import { api } from '/assets/js/api.js';
import { initPage } from '/assets/js/layout.js';
import { isAdmin, takeFlash } from '/assets/js/session.js';
import {
  $, badge, clearFieldErrors, formStatus, h, shortId, showFieldErrors, timeEl, toast,
} from '/assets/js/ui.js';

const params = new URLSearchParams(location.search);
const denied = params.get('denied');

// ---------------------------------------------------------------- inbox (users)

const inbox = {
  items: new Map(),
  order: [],
  cursor: null,
};

function inboxItem(n) {
  const unread = !n.readAt;
  const read = h('button', { type: 'button', class: 'secondary small', 'data-action': 'read' }, 'Mark as read');
  read.hidden = !unread;
  read.addEventListener('click', () => markRead(n.notificationId));
  return h('li', { 'data-notification-id': n.notificationId, 'data-unread': String(unread) },
    h('span', { class: 'title' }, n.title),
    h('span', { class: 'message' }, n.message),
    h('div', { class: 'meta' },
      h('span', { class: 'badge type' }, n.type),
      timeEl(n.createdAt),
      unread ? h('span', { class: 'badge', 'data-status': 'PENDING' }, 'Unread') : h('span', { class: 'visually-hidden' }, 'Read'),
      read));
}

function renderInbox() {
  const list = $('#inbox');
  list.replaceChildren(...inbox.order.map((id) => inboxItem(inbox.items.get(id))));
  $('#inbox-empty').hidden = inbox.order.length > 0;
  $('#inbox-more').hidden = !inbox.cursor;
  countUnread();
}

function countUnread() {
  const unread = inbox.order.filter((id) => !inbox.items.get(id).readAt).length;
  $('#unread-count').textContent = `${unread} unread`;
  $('#unread-count').dataset.count = String(unread);
  $('#mark-all').disabled = unread === 0;
  page.setBell(unread);
}

function upsert(n, atTop) {
  const known = inbox.items.has(n.notificationId);
  inbox.items.set(n.notificationId, { ...(inbox.items.get(n.notificationId) || {}), ...n });
  if (!known) {
    if (atTop) inbox.order.unshift(n.notificationId);
    else inbox.order.push(n.notificationId);
  }
  return !known;
}

function sortInbox() {
  inbox.order.sort((a, b) => String(inbox.items.get(b).createdAt).localeCompare(String(inbox.items.get(a).createdAt)));
}

/** Loads the newest page and merges it in; returns how many items are shown. */
async function refreshInbox() {
  const res = await api('/api/notifications', { query: { limit: 100 } });
  for (const n of res.items || []) upsert(n, false);
  if (!inbox.cursor) inbox.cursor = res.nextCursor;
  sortInbox();
  renderInbox();
  return inbox.order.length;
}

async function olderInbox() {
  if (!inbox.cursor) return;
  const res = await api('/api/notifications', { query: { limit: 100, cursor: inbox.cursor } });
  for (const n of res.items || []) upsert(n, false);
  inbox.cursor = res.nextCursor;
  renderInbox();
}

async function markRead(id) {
  try {
    const n = await api(`/api/notifications/${encodeURIComponent(id)}/read`, { method: 'POST' });
    upsert(n, false);
    const li = document.querySelector(`#inbox li[data-notification-id="${CSS.escape(id)}"]`);
    if (li) {
      const hadFocus = li.contains(document.activeElement);
      const next = inboxItem(inbox.items.get(id));
      li.replaceWith(next);
      if (hadFocus) {
        // The button is gone: keep keyboard focus on the item it belonged to.
        next.tabIndex = -1;
        next.focus();
      }
    }
    countUnread();
  } catch (e) {
    toast('Could not mark as read', e.message);
  }
}

/**
 * Right after registration the welcome email is on its way through the bus:
 * look again a few times, for a few seconds only, until it is there.
 */
async function awaitWelcome() {
  for (const wait of [300, 500, 800, 1200, 2000, 3000, 5000]) {
    if (inbox.order.length > 0) return;
    await new Promise((r) => setTimeout(r, wait));
    await refreshInbox().catch(() => 0);
  }
}

function startInbox() {
  $('#inbox-view').hidden = false;
  $('#inbox-more').addEventListener('click', () => olderInbox().catch((e) => toast('Could not load', e.message)));
  $('#mark-all').addEventListener('click', async () => {
    const unread = inbox.order.filter((id) => !inbox.items.get(id).readAt);
    for (const id of unread) await markRead(id);
  });
  const justRegistered = takeFlash('registered');
  refreshInbox()
    .then(() => (justRegistered ? awaitWelcome() : null))
    .catch((e) => toast('Could not load your notifications', e.message));
}

function onUserPush(f, fresh) {
  const added = upsert({
    notificationId: f.notificationId,
    type: 'PUSH',
    title: f.title,
    message: f.message,
    createdAt: f.createdAt,
    readAt: null,
    status: 'SENT',
  }, true);
  if (added) {
    sortInbox();
    renderInbox();
  }
  if (fresh && added) toast(f.title, f.message);
  return true;
}

// ---------------------------------------------------------------- admin view

const admin = {
  users: new Map(),
  rows: new Map(),
  cursor: null,
  filters: { userId: '', status: '', type: '' },
};

function userLabel(u) {
  return `${u.firstName} ${u.lastName} <${u.email}>`;
}

function userName(id) {
  const u = admin.users.get(id);
  return u ? `${u.firstName} ${u.lastName}` : shortId(id);
}

async function loadUsers() {
  let cursor = null;
  for (let i = 0; i < 10; i += 1) {
    const res = await api('/api/users', { query: { limit: 200, cursor } });
    for (const u of res.items || []) admin.users.set(u.userId, u);
    cursor = res.nextCursor;
    if (!cursor) break;
  }
  fillUserPickers();
}

function sortedUsers() {
  return [...admin.users.values()].sort((a, b) => a.email.localeCompare(b.email));
}

function fillUserPickers() {
  const filter = $('#send-user-filter').value.trim().toLowerCase();
  const picker = $('#send-user');
  const chosen = picker.value;
  const matching = sortedUsers().filter((u) => !filter || userLabel(u).toLowerCase().includes(filter));
  picker.replaceChildren(...matching.map((u) => new Option(userLabel(u), u.userId, false, u.userId === chosen)));
  if (!matching.length) picker.append(new Option('No user matches', '', true, true));
  const fu = $('#filter-user');
  const current = fu.value;
  fu.replaceChildren(new Option('Everyone', ''), ...sortedUsers().map((u) => new Option(userLabel(u), u.userId, false, u.userId === current)));
}

function historyList(history) {
  if (!history || !history.length) return h('p', { class: 'muted small' }, 'No history.');
  return h('ol', { class: 'small' }, history.map((e) => h('li', null,
    timeEl(e.at), ' ', badge(e.status), ` attempt ${e.attempt}`, e.reason ? ` — ${e.reason}` : '')));
}

function row(n) {
  const toggle = h('button', { type: 'button', class: 'quiet', 'aria-expanded': 'false' }, 'History');
  const tr = h('tr', { 'data-notification-id': n.notificationId },
    h('td', null, timeEl(n.createdAt)),
    h('td', { class: 'wrap-any', title: n.userId }, userName(n.userId)),
    h('td', null, h('span', { class: 'badge type' }, n.type)),
    h('td', { class: 'wrap-any' }, n.title),
    h('td', { 'data-cell': 'status' }, badge(n.status)),
    h('td', { class: 'num hide-narrow', 'data-cell': 'attempts' }, String(n.attempts ?? 0)),
    h('td', null, toggle));
  const detail = h('tr', { class: 'detail', hidden: true }, h('td', { colspan: '7' }));
  toggle.addEventListener('click', () => toggleHistory(n.notificationId, toggle, detail));
  admin.rows.set(n.notificationId, { tr, detail, toggle });
  return [tr, detail];
}

async function toggleHistory(id, toggle, detail) {
  const open = toggle.getAttribute('aria-expanded') === 'true';
  if (open) {
    toggle.setAttribute('aria-expanded', 'false');
    detail.hidden = true;
    return;
  }
  toggle.setAttribute('aria-expanded', 'true');
  detail.hidden = false;
  await loadHistory(id, detail);
}

async function loadHistory(id, detail) {
  const cell = detail.firstElementChild;
  cell.replaceChildren(h('p', { class: 'muted small' }, 'Loading…'));
  try {
    const n = await api(`/api/notifications/${encodeURIComponent(id)}`);
    cell.replaceChildren(
      h('p', { class: 'small wrap-any' }, n.message),
      h('p', { class: 'small muted wrap-any' }, `Recipient: ${n.recipient || '—'} · id ${n.notificationId}`, n.lastError ? ` · last error: ${n.lastError}` : ''),
      historyList(n.history));
  } catch (e) {
    cell.replaceChildren(h('p', { class: 'error' }, e.message));
  }
}

async function loadList(reset) {
  const status = $('#list-status');
  formStatus(status, '', 'Loading…');
  try {
    const res = await api('/api/notifications', { query: { ...admin.filters, limit: 25, cursor: reset ? null : admin.cursor } });
    const body = $('#list-body');
    if (reset) {
      admin.rows.clear();
      body.replaceChildren();
    }
    for (const n of res.items || []) {
      if (!admin.rows.has(n.notificationId)) body.append(...row(n));
    }
    admin.cursor = res.nextCursor;
    $('#list-more').hidden = !admin.cursor;
    formStatus(status, '', body.children.length ? '' : 'No notification matches.');
  } catch (e) {
    formStatus(status, 'error', e.message);
  }
}

function matchesFilters(p, status) {
  const f = admin.filters;
  return (!f.userId || f.userId === p.userId) && (!f.type || f.type === p.type) && (!f.status || f.status === status);
}

/** Statuses of notifications whose trigger event has not been seen yet. */
const earlyStatus = new Map();

function onAdminEvent(f) {
  if (f.type !== 'EVENT' || f.deadLetter) return;
  const p = f.payload || {};
  if (f.eventType === 'UserRegistered' && p.userId && !admin.users.has(p.userId)) {
    admin.users.set(p.userId, { userId: p.userId, email: p.email, firstName: p.firstName, lastName: p.lastName });
    fillUserPickers();
  } else if (f.eventType === 'NotificationTriggered' && p.notificationId) {
    // Status events travel on another topic and may arrive first: use the latest one seen.
    const seen = earlyStatus.get(p.notificationId);
    earlyStatus.delete(p.notificationId);
    const status = seen ? seen.status : 'PENDING';
    if (!admin.rows.has(p.notificationId) && matchesFilters(p, status)) {
      $('#list-body').prepend(...row({ ...p, createdAt: p.timestamp, status, attempts: seen ? seen.attempt : 0 }));
      formStatus($('#list-status'), '', '');
    }
  } else if (f.eventType === 'NotificationStatusChanged' && p.notificationId) {
    const r = admin.rows.get(p.notificationId);
    if (!r) {
      earlyStatus.set(p.notificationId, { status: p.status, attempt: p.attempt });
      if (earlyStatus.size > 1000) earlyStatus.delete(earlyStatus.keys().next().value);
      return;
    }
    r.tr.querySelector('[data-cell="status"]').replaceChildren(badge(p.status));
    r.tr.querySelector('[data-cell="attempts"]').textContent = String(p.attempt ?? '');
    if (r.toggle.getAttribute('aria-expanded') === 'true') loadHistory(p.notificationId, r.detail);
  }
}

function startAdmin() {
  $('#admin-view').hidden = false;
  loadUsers().catch((e) => toast('Could not load users', e.message));
  loadList(true);
  $('#send-user-filter').addEventListener('input', fillUserPickers);
  $('#filter-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const form = e.currentTarget;
    admin.filters = { userId: form.userId.value, status: form.status.value, type: form.type.value };
    loadList(true);
  });
  $('#list-more').addEventListener('click', () => loadList(false));
  const form = $('#send-form');
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const status = $('#send-status');
    clearFieldErrors(form);
    const body = {
      userId: form.userId.value,
      type: form.querySelector('input[name="type"]:checked')?.value || 'EMAIL',
      title: form.title.value,
      message: form.message.value,
    };
    const recipient = form.recipient.value.trim();
    if (recipient) body.recipient = recipient;
    const missing = [];
    if (!body.userId) missing.push({ field: 'userId', reason: 'Choose a user.' });
    if (!body.title.trim()) missing.push({ field: 'title', reason: 'Give a title.' });
    if (!body.message.trim()) missing.push({ field: 'message', reason: 'Write a message.' });
    if (missing.length) {
      showFieldErrors(form, { fieldErrors: missing });
      formStatus(status, 'error', 'Please correct the marked fields.');
      return;
    }
    const button = form.querySelector('button[type="submit"]');
    button.disabled = true;
    formStatus(status, '', 'Sending…');
    try {
      const res = await api('/api/events/notifications', { method: 'POST', body });
      formStatus(status, 'ok', `Queued: ${body.type} notification ${res.notificationId} for ${userName(body.userId)}.`);
      form.title.value = '';
      form.message.value = '';
      form.recipient.value = '';
    } catch (err) {
      const rest = showFieldErrors(form, err);
      formStatus(status, 'error', rest.length || !err.fieldErrors.length ? err.message : 'Please correct the marked fields.');
    } finally {
      button.disabled = false;
    }
  });
}

// ---------------------------------------------------------------- start

let page = null;
let started = false;
page = initPage({
  path: '/notifications',
  onPush: (f, fresh) => {
    if (page && !isAdmin(page.session)) return onUserPush(f, fresh);
    return false;
  },
  onFrame: (f) => {
    if (page && isAdmin(page.session)) onAdminEvent(f);
  },
  onOpen: ({ reconnect }) => {
    // After a drop, refetch what is shown: nothing that happened meanwhile is lost.
    if (!reconnect || !started) return;
    if (isAdmin(page.session)) loadList(true);
    else refreshInbox().catch(() => {});
  },
});

if (page) {
  started = true;
  if (denied) {
    const d = $('#denied');
    d.textContent = `The page ${denied} is for administrators only.`;
    d.hidden = false;
  }
  if (isAdmin(page.session)) startAdmin();
  else startInbox();
}

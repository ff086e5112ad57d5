// What every page shares: the access check, the header (navigation,
// connection state, bell, sign-out), the page's WebSocket and PUSH toasts.

import { api } from '/assets/js/api.js';
import { connectLive } from '/assets/js/live.js';
import { clearSession, getSession, isAdmin } from '/assets/js/session.js';
import { h, s, toast } from '/assets/js/ui.js';

const NAV = [
  { path: '/', label: 'Overview', admin: false },
  { path: '/dashboard', label: 'Dashboard', admin: true },
  { path: '/notifications', label: 'Notifications', admin: false },
  { path: '/monitoring', label: 'Monitoring', admin: true },
  { path: '/logs', label: 'Logs', admin: true },
];

export async function signOut() {
  try {
    await api('/api/users/logout', { method: 'POST' });
  } catch {
    // The token is dropped here whatever the server said.
  }
  clearSession();
  location.assign('/');
}

function bellIcon() {
  return s('svg', { viewBox: '0 0 24 24', 'aria-hidden': 'true', focusable: 'false' },
    s('path', { d: 'M12 22a2.5 2.5 0 0 0 2.45-2h-4.9A2.5 2.5 0 0 0 12 22zm7-6V11a7 7 0 0 0-5.5-6.84V3.5a1.5 1.5 0 0 0-3 0v.66A7 7 0 0 0 5 11v5l-2 2v1h18v-1z' }));
}

const STATE_TEXT = {
  connecting: 'Connecting…',
  live: 'Live',
  offline: 'Offline',
};

/**
 * Checks access, draws the header and opens the page's socket.
 * @param {{path:string, requireAuth?:boolean, adminOnly?:boolean,
 *   onFrame?:(f:any)=>void, onPush?:(f:any)=>boolean|void, onOpen?:(info:{reconnect:boolean}, live:any)=>void,
 *   connect?:boolean}} opts
 */
export function initPage(opts) {
  const { path, requireAuth = true, adminOnly = false, connect = true } = opts;
  const session = getSession();
  if (requireAuth && !session) {
    location.replace(`/?next=${encodeURIComponent(location.pathname + location.search)}`);
    return null;
  }
  if (adminOnly && !isAdmin(session)) {
    // The page holds no data itself and every API behind it answers 403 to a
    // non-administrator; this only spares them an empty page.
    location.replace(`/notifications?denied=${encodeURIComponent(path)}`);
    return null;
  }
  const main = document.getElementById('main');
  if (main) main.hidden = false;

  const top = document.getElementById('top');
  const conn = h('span', { class: 'conn', role: 'status', 'data-conn-state': 'offline', id: 'conn-state' }, 'Offline');
  const bellCount = h('span', { class: 'bell-count', id: 'bell-count', 'data-count': '0' }, '0');
  const bellLabel = h('span', { class: 'visually-hidden', id: 'bell-label' }, 'No unread notifications');
  const bell = h('a', { class: 'bell', href: '/notifications', id: 'bell' }, bellIcon(), bellCount, bellLabel);
  const nav = h('ul', { class: 'nav' },
    NAV.filter((n) => !n.admin || isAdmin(session)).filter((n) => session || n.path === '/').map((n) =>
      h('li', null, h('a', { href: n.path, 'aria-current': n.path === path ? 'page' : null }, n.label))));
  const right = h('div', { class: 'top-right' });
  if (session) {
    right.append(
      conn,
      isAdmin(session) ? '' : bell,
      h('span', { class: 'who', title: session.email }, session.email, isAdmin(session) ? ' (admin)' : ''),
      h('button', { type: 'button', id: 'sign-out', onclick: signOut }, 'Sign out'),
    );
  }
  top.replaceChildren(h('div', { class: 'top-inner' },
    h('a', { class: 'brand', href: '/' }, h('img', { src: '/assets/icon.svg', alt: '' }), 'Clairon'),
    h('nav', { 'aria-label': 'Main' }, nav),
    right));

  let unread = 0;
  const setBell = (n) => {
    unread = Math.max(0, n);
    bellCount.textContent = unread > 99 ? '99+' : String(unread);
    bellCount.dataset.count = String(unread);
    bellLabel.textContent = unread === 0 ? 'No unread notifications' : `${unread} unread notification${unread === 1 ? '' : 's'}`;
  };

  const setState = (st, retryMs) => {
    conn.dataset.connState = st;
    conn.textContent = st === 'offline' && retryMs
      ? `Offline — retrying in ${Math.max(1, Math.round(retryMs / 1000))} s`
      : STATE_TEXT[st];
  };

  const seenPushes = new Set();
  const page = { session, live: null, setBell, bump: (d) => setBell(unread + d), seenPushes };
  if (!session || !connect) return page;

  page.live = connectLive({
    token: session.token,
    onState: setState,
    onOpen: (info) => opts.onOpen && opts.onOpen(info, page.live),
    onFrame: (f) => {
      if (f && f.type === 'PUSH' && typeof f.notificationId === 'string') {
        const fresh = !seenPushes.has(f.notificationId);
        seenPushes.add(f.notificationId);
        const handled = opts.onPush ? opts.onPush(f, fresh) : false;
        if (fresh && !handled) {
          toast(f.title, f.message);
          if (!isAdmin(session)) page.bump(1);
        }
        return;
      }
      if (opts.onFrame) opts.onFrame(f);
    },
  });

  if (!isAdmin(session) && !opts.onPush) {
    // The bell on pages other than the inbox: the count of unread notifications.
    api('/api/notifications', { query: { limit: 200 } })
      .then((page0) => setBell((page0.items || []).filter((n) => !n.readAt).length))
      .catch(() => {});
  }
  return page;
}

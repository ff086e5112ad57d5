// The page's one WebSocket to /ws.
//
// The token travels as the `clairon.bearer` subprotocol (the second entry of
// Sec-WebSocket-Protocol), never in the URL. On a drop the socket reconnects
// with exponential backoff and jitter; the server sends on connect the PUSH
// notifications no socket took meanwhile, and the pages refetch what they show
// after a reconnect, so nothing is lost. Before each reconnect the token is
// checked: an expired or revoked one sends the person back to sign in.

import { api } from '/assets/js/api.js';

const MIN_DELAY_MS = 500;
const MAX_DELAY_MS = 15000;

/**
 * @param {{token:string,
 *   onFrame:(frame:any)=>void,
 *   onState?:(state:'connecting'|'live'|'offline', retryInMs?:number)=>void,
 *   onOpen?:(info:{reconnect:boolean})=>void}} opts
 */
export function connectLive(opts) {
  const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
  let ws = null;
  let failures = 0;
  let opened = 0;
  let timer = null;
  let stopped = false;

  const state = (st, ms) => opts.onState && opts.onState(st, ms);

  function open() {
    clearTimeout(timer);
    timer = null;
    state('connecting');
    ws = new WebSocket(url, ['clairon.bearer', opts.token]);
    ws.addEventListener('open', () => {
      failures = 0;
      opened += 1;
      state('live');
      if (opts.onOpen) opts.onOpen({ reconnect: opened > 1 });
    });
    ws.addEventListener('message', (e) => {
      if (typeof e.data !== 'string') return;
      let frame;
      try {
        frame = JSON.parse(e.data);
      } catch {
        return;
      }
      opts.onFrame(frame);
    });
    ws.addEventListener('close', () => {
      ws = null;
      if (!stopped) schedule();
    });
  }

  function schedule() {
    const base = Math.min(MAX_DELAY_MS, MIN_DELAY_MS * 2 ** failures);
    const delay = Math.round(base * (0.8 + Math.random() * 0.4));
    failures += 1;
    state('offline', delay);
    timer = setTimeout(reconnect, delay);
  }

  async function reconnect() {
    timer = null;
    if (stopped) return;
    try {
      // 401 here ends the session (api() sends the person to sign in).
      await api('/api/users/me');
    } catch (e) {
      if (e.status === 401) return;
      // Server unreachable: try the socket anyway, it fails fast.
    }
    if (!stopped && !ws) open();
  }

  // Back online, or back to a hidden tab: do not wait for the backoff.
  const hurry = () => {
    if (!stopped && !ws && timer) {
      clearTimeout(timer);
      reconnect();
    }
  };
  window.addEventListener('online', hurry);
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible') hurry();
  });
  window.addEventListener('pagehide', () => {
    stopped = true;
    clearTimeout(timer);
    if (ws) ws.close(1000, 'page closed');
  });

  open();

  return {
    /** Sends a JSON message when the socket is open; false otherwise. */
    send(obj) {
      if (ws && ws.readyState === WebSocket.OPEN) {
        ws.send(JSON.stringify(obj));
        return true;
      }
      return false;
    },
  };
}

// The signed-in session: access token, user id, role, email and name.
//
// Where the token is kept: sessionStorage, on purpose, rather than localStorage
// or a cookie.
// - sessionStorage is scoped to this tab and dropped when the tab closes, so a
//   token does not linger on a shared computer after the browser is closed, and
//   it is not handed to every other tab of the origin.
// - Not a cookie: the browser never attaches it on its own, so there is no
//   cross-site request forgery to defend against, and it never travels in a URL
//   (the WebSocket gets it through its subprotocol header), so it never lands in
//   server or proxy logs or in the history.
// - Script injection could read either storage; what guards against that is the
//   strict Content-Security-Policy (no inline or foreign script) and writing
//   every piece of data as text. Tokens also expire (one hour by default) and
//   signing out revokes them on the server.
// The cost: a new tab asks to sign in again.

const KEY = 'clairon.session';
const FLASH = 'clairon.flash';

/** @returns {{token:string,userId:string,role:string,email:string,firstName:string,lastName:string,expiresAt:number}|null} */
export function getSession() {
  let s = null;
  try {
    s = JSON.parse(sessionStorage.getItem(KEY) || 'null');
  } catch {
    s = null;
  }
  if (!s || typeof s.token !== 'string') return null;
  if (typeof s.expiresAt === 'number' && Date.now() > s.expiresAt) {
    clearSession();
    return null;
  }
  return s;
}

export function setSession(s) {
  sessionStorage.setItem(KEY, JSON.stringify(s));
}

export function clearSession() {
  sessionStorage.removeItem(KEY);
}

export function isAdmin(s) {
  return !!s && s.role === 'ADMIN';
}

/** A one-shot flag for the next page (e.g. "just registered"). */
export function setFlash(name) {
  sessionStorage.setItem(`${FLASH}.${name}`, '1');
}

export function takeFlash(name) {
  const k = `${FLASH}.${name}`;
  const had = sessionStorage.getItem(k) === '1';
  sessionStorage.removeItem(k);
  return had;
}

/** Where a signed-in person lands by default. */
export function homeFor(s) {
  return isAdmin(s) ? '/dashboard' : '/notifications';
}

/** Only same-site paths are followed after sign-in. */
export function safeNext(value) {
  if (typeof value !== 'string') return null;
  if (!value.startsWith('/') || value.startsWith('//') || value.includes('\\')) return null;
  return value;
}

// JSON calls to the gateway on this origin, with the session's token and
// problem+json errors turned into ApiError.

import { clearSession, getSession } from '/assets/js/session.js';

export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
    /** @type {{field:string, reason:string}[]} */
    this.fieldErrors = Array.isArray(problem && problem.errors) ? problem.errors : [];
  }
}

function withQuery(path, query) {
  if (!query) return path;
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) {
    if (v !== undefined && v !== null && v !== '') params.set(k, String(v));
  }
  const qs = params.toString();
  return qs ? `${path}?${qs}` : path;
}

/** Sends the person back to sign in, keeping where they were. */
export function signInAgain() {
  clearSession();
  const next = location.pathname + location.search;
  location.assign(`/?expired=1&next=${encodeURIComponent(next)}`);
}

/**
 * @param {string} path
 * @param {{method?:string, body?:any, query?:object, auth?:boolean}} [opts]
 */
export async function api(path, opts = {}) {
  const { method = 'GET', body, query, auth = true } = opts;
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const session = getSession();
  if (auth && session) headers.Authorization = `Bearer ${session.token}`;
  let res;
  try {
    res = await fetch(withQuery(path, query), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'omit',
      cache: 'no-store',
    });
  } catch (e) {
    throw new ApiError(0, { detail: 'The server could not be reached. Check the connection and try again.' });
  }
  if (res.status === 401 && auth && session) {
    signInAgain();
    throw new ApiError(401, { detail: 'Your session has ended; sign in again.' });
  }
  const text = await res.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { detail: text };
    }
  }
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

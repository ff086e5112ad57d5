// DOM helpers. Data is only ever written as text (text nodes, textContent,
// attribute values): no HTML string is ever parsed from data.

const SVG_NS = 'http://www.w3.org/2000/svg';

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') {
      el.addEventListener(k.slice(2).toLowerCase(), v);
    } else if (k === 'dataset') {
      Object.assign(el.dataset, v);
    } else if (k === 'text') {
      el.textContent = String(v);
    } else {
      el.setAttribute(k, v === true ? '' : String(v));
    }
  }
}

/** Creates an HTML element: h('td', {class: 'num'}, 'text', childNode, …). */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

/** Creates an SVG element. */
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

export function $(sel, root = document) {
  return root.querySelector(sel);
}

export function fmtTime(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return d.toLocaleString(undefined, {
    year: 'numeric', month: 'short', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit',
  });
}

export function fmtClock(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  return d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

/** A <time> element showing a local time, with the exact value as its datetime. */
export function timeEl(iso, clock = false) {
  return h('time', { datetime: iso || '' }, clock ? fmtClock(iso) : fmtTime(iso));
}

export function badge(status, extraClass) {
  return h('span', { class: `badge ${extraClass || ''}`.trim(), 'data-status': status || '' }, status || '—');
}

export function shortId(id) {
  return typeof id === 'string' && id.length > 13 ? `${id.slice(0, 8)}…` : String(id || '');
}

export function fmtNumber(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return '—';
  return Number(n).toLocaleString();
}

/** Shows a message in a form's status line (role="status" or "alert"). */
export function formStatus(el, kind, text) {
  if (!el) return;
  el.dataset.kind = kind || '';
  el.textContent = text || '';
}

/** Marks the fields an API error names and writes each reason next to its field. */
export function showFieldErrors(form, err, fieldMap = {}) {
  clearFieldErrors(form);
  const unmatched = [];
  for (const fe of (err && err.fieldErrors) || []) {
    const name = fieldMap[fe.field] || fe.field;
    const input = form.elements.namedItem(name);
    const holder = input && !(input instanceof RadioNodeList) ? input : null;
    if (!holder) {
      unmatched.push(`${fe.field}: ${fe.reason}`);
      continue;
    }
    holder.setAttribute('aria-invalid', 'true');
    const id = `${holder.id || name}-error`;
    const msg = h('p', { class: 'error', id }, fe.reason);
    holder.closest('.field')?.append(msg);
    const described = (holder.getAttribute('aria-describedby') || '').split(' ').filter(Boolean);
    if (!described.includes(id)) described.push(id);
    holder.setAttribute('aria-describedby', described.join(' '));
  }
  const first = form.querySelector('[aria-invalid="true"]');
  if (first) first.focus();
  return unmatched;
}

export function clearFieldErrors(form) {
  for (const el of form.querySelectorAll('[aria-invalid="true"]')) {
    el.removeAttribute('aria-invalid');
    const ids = (el.getAttribute('aria-describedby') || '').split(' ').filter((i) => !i.endsWith('-error'));
    if (ids.length) el.setAttribute('aria-describedby', ids.join(' '));
    else el.removeAttribute('aria-describedby');
  }
  for (const p of form.querySelectorAll('.field .error')) p.remove();
}

/** A short-lived message in the corner, read out by screen readers. */
export function toast(title, body, { timeout = 7000 } = {}) {
  const region = document.getElementById('toasts');
  if (!region) return;
  const close = h('button', { type: 'button', class: 'small' }, 'Dismiss');
  // The region is aria-live: a toast is read out when it appears.
  const t = h('div', { class: 'toast' },
    h('span', { class: 'toast-title' }, title),
    body ? h('span', { class: 'toast-body' }, body) : null,
    close);
  const remove = () => t.remove();
  close.addEventListener('click', remove);
  region.append(t);
  while (region.children.length > 4) region.firstElementChild.remove();
  setTimeout(remove, timeout);
}

/** Pretty JSON as text. */
export function jsonText(v) {
  try {
    return JSON.stringify(v, null, 2);
  } catch {
    return String(v);
  }
}

export function debounce(fn, ms) {
  let t = null;
  return (...args) => {
    clearTimeout(t);
    t = setTimeout(() => fn(...args), ms);
  };
}

// Small SVG charts drawn by hand (no library): a multi-series line chart and a
// grouped bar chart. Each is an <svg role="img"> with a text label, followed
// by a legend; the figures are also shown as numbers on the page.

import { h, s } from '/assets/js/ui.js';

export const PALETTE = ['#4338ca', '#0f766e', '#c2410c', '#be185d', '#0369a1', '#65a30d', '#b91c1c', '#7c3aed'];

export const STATUS_COLORS = {
  PENDING: '#d97706',
  SENT: '#15803d',
  CAPTURED: '#2563eb',
  FAILED: '#dc2626',
  DEAD: '#7f1d1d',
};

// Drawn at the container's own width, so text keeps its real size at any width.
function widthOf(container) {
  return Math.max(260, Math.round(container.clientWidth || 640));
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) {
    if (v <= m * p) return m * p;
  }
  return 10 * p;
}

function fmtTick(v) {
  if (v >= 1000) return `${Math.round(v / 100) / 10}k`;
  return String(Math.round(v * 100) / 100);
}

function legend(items) {
  return h('ul', { class: 'legend' },
    items.map(([label, color]) => h('li', null, h('span', { class: 'swatch', 'data-color': color, 'aria-hidden': 'true' }), label)));
}

// The swatch colours are set through the CSSOM (allowed by the CSP), not a style attribute.
function paintSwatches(root) {
  for (const el of root.querySelectorAll('.swatch[data-color]')) el.style.background = el.dataset.color;
}

/**
 * @param {HTMLElement} container
 * @param {{label:string, series:{name:string, color:string, values:number[]}[], xLabels?:string[],
 *   yUnit?:string, height?:number, extraLines?:{value:number,label:string,color:string}[]}} o
 */
export function lineChart(container, o) {
  const W = widthOf(container);
  const H = o.height || 220;
  const m = { l: 46, r: 12, t: 12, b: 24 };
  const n = Math.max(2, ...o.series.map((x) => x.values.length));
  const top = niceMax(Math.max(0, ...o.series.flatMap((x) => x.values), ...(o.extraLines || []).map((l) => l.value)));
  const x = (i) => m.l + (i * (W - m.l - m.r)) / (n - 1);
  const y = (v) => H - m.b - (v / top) * (H - m.t - m.b);
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': o.label });
  for (let k = 0; k <= 4; k += 1) {
    const v = (top * k) / 4;
    svg.append(s('line', { class: 'grid-line', x1: m.l, x2: W - m.r, y1: y(v), y2: y(v) }));
    svg.append(s('text', { x: m.l - 6, y: y(v) + 4, 'text-anchor': 'end' }, `${fmtTick(v)}${k === 4 && o.yUnit ? ` ${o.yUnit}` : ''}`));
  }
  svg.append(s('line', { class: 'axis', x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b }));
  const xl = o.xLabels || [];
  if (xl.length) {
    for (const i of [0, Math.floor((xl.length - 1) / 2), xl.length - 1]) {
      if (xl[i] === undefined) continue;
      const anchor = i === 0 ? 'start' : i === xl.length - 1 ? 'end' : 'middle';
      svg.append(s('text', { x: x(i), y: H - 6, 'text-anchor': anchor }, xl[i]));
    }
  }
  for (const l of o.extraLines || []) {
    svg.append(s('line', { x1: m.l, x2: W - m.r, y1: y(l.value), y2: y(l.value), stroke: l.color, 'stroke-dasharray': '5 4', 'stroke-width': 1.5 }));
  }
  for (const ser of o.series) {
    if (!ser.values.length) continue;
    const pts = ser.values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
    svg.append(s('polyline', { points: pts, fill: 'none', stroke: ser.color, 'stroke-width': 2, 'stroke-linejoin': 'round' },
      s('title', null, ser.name)));
    if (ser.values.length === 1) {
      svg.append(s('circle', { cx: x(0), cy: y(ser.values[0]), r: 3, fill: ser.color }));
    }
  }
  const items = o.series.map((ser) => [ser.name, ser.color]).concat((o.extraLines || []).map((l) => [l.label, l.color]));
  const lg = legend(items);
  container.replaceChildren(svg, lg);
  paintSwatches(container);
}

/**
 * Grouped bars: one group per category, one bar per series.
 * @param {HTMLElement} container
 * @param {{label:string, categories:string[], series:{name:string,color:string}[], value:(cat:string, ser:string)=>number, height?:number}} o
 */
export function barChart(container, o) {
  const W = widthOf(container);
  const H = o.height || 220;
  const m = { l: 46, r: 12, t: 18, b: 26 };
  let max = 0;
  for (const c of o.categories) for (const ser of o.series) max = Math.max(max, o.value(c, ser.name) || 0);
  const top = niceMax(max);
  const y = (v) => H - m.b - (v / top) * (H - m.t - m.b);
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': o.label });
  for (let k = 0; k <= 4; k += 1) {
    const v = (top * k) / 4;
    svg.append(s('line', { class: 'grid-line', x1: m.l, x2: W - m.r, y1: y(v), y2: y(v) }));
    svg.append(s('text', { x: m.l - 6, y: y(v) + 4, 'text-anchor': 'end' }, fmtTick(v)));
  }
  const groupW = (W - m.l - m.r) / o.categories.length;
  const barW = Math.min(28, (groupW * 0.8) / o.series.length);
  o.categories.forEach((c, gi) => {
    const gx = m.l + gi * groupW + (groupW - barW * o.series.length) / 2;
    o.series.forEach((ser, si) => {
      const v = o.value(c, ser.name) || 0;
      const bx = gx + si * barW;
      svg.append(s('rect', { x: bx + 1, y: y(v), width: barW - 2, height: Math.max(0, H - m.b - y(v)), fill: ser.color },
        s('title', null, `${c} ${ser.name}: ${v}`)));
      if (v > 0) svg.append(s('text', { x: bx + barW / 2, y: y(v) - 3, 'text-anchor': 'middle' }, String(v)));
    });
    svg.append(s('text', { x: m.l + gi * groupW + groupW / 2, y: H - 8, 'text-anchor': 'middle' }, c));
  });
  svg.append(s('line', { class: 'axis', x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b }));
  container.replaceChildren(svg, legend(o.series.map((ser) => [ser.name, ser.color])));
  paintSwatches(container);
}

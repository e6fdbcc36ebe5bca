// Charts: uPlot time charts (bars, stacked bars, lines, a second axis, server-event markers,
// tooltips, click to drill down) and SVG bar lists. Colours come from CSS variables, so the
// charts follow the light/dark theme; every chart is rebuilt when the theme changes.

/* global uPlot */
import { esc } from "./format.js";

const charts = new Set();

export function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

const color = (c) => (c && c.startsWith("--") ? cssVar(c) : c);
export const PALETTE = ["--c1", "--c2", "--c3", "--c4", "--c5", "--c6", "--c7", "--c8"];

export function rebuildAll() {
  for (const chart of charts) chart.rebuild();
}

const onResize = new ResizeObserver((entries) => {
  for (const entry of entries) entry.target.__chart?.resize();
});

function swatch(cls, c) {
  const s = document.createElement("span");
  s.className = cls;
  s.style.background = color(c);
  return s;
}

function renderLegend(el, items) {
  el.replaceChildren();
  for (const item of items) {
    const node = document.createElement(item.href ? "a" : "span");
    node.className = "item";
    if (item.href) node.href = item.href;
    node.append(swatch(item.type === "line" ? "line-swatch" : "swatch", item.color), item.label);
    el.append(node);
  }
}

/**
 * A time chart. spec: {x: [epoch s], grain: s, series: [{label, values, color, type: "bar"|"line",
 * axis: "y"|"y2", href, fmt, points: show every point (sparse lines)}], stacked, y: {fmt, min, max}, y2: {fmt, min, max}, markers: [{t, label, detail}],
 * height, onPick(seriesIndex, pointIndex)}.
 */
export function timeChart(el, spec) {
  const chart = {
    el, spec, u: null,
    rebuild() { build(chart); },
    resize() {
      const width = el.clientWidth;
      if (chart.u && width && Math.abs(width - chart.u.width) > 1) chart.u.setSize({ width, height: chart.u.height });
    },
    update(next) {
      const same = next.series.length === chart.spec.series.length && next.x.length === chart.spec.x.length
        && next.series.every((s, i) => s.label === chart.spec.series[i].label) && (next.markers || []).length === (chart.spec.markers || []).length;
      chart.spec = next;
      if (same && chart.u) {
        chart.u.setData(dataOf(next));
        describe(chart);
      } else build(chart);
    },
  };
  el.__chart = chart;
  charts.add(chart);
  onResize.observe(el);
  build(chart);
  return chart;
}

function dataOf(spec) {
  const out = [spec.x];
  if (spec.stacked) { // cumulative, tallest first: each bar is painted over the ones above it
    const acc = new Array(spec.x.length).fill(0);
    const stacks = spec.series.map((s) => s.values.map((v, i) => (acc[i] += v || 0)));
    for (let k = stacks.length - 1; k >= 0; k--) out.push(stacks[k]);
  } else for (const s of spec.series) out.push(s.values);
  return out;
}

function ordered(spec) {
  return spec.stacked ? [...spec.series].reverse() : spec.series;
}

function describe(chart) {
  const { el, spec } = chart;
  let points = 0;
  for (const s of spec.series) for (const v of s.values) if (v != null && v !== 0) points++;
  el.dataset.points = String(points);
  el.dataset.series = String(spec.series.length);
  const [lo, hi] = [spec.x[0], spec.x[spec.x.length - 1] + (spec.grain || 0)];
  el.dataset.markers = String((spec.markers || []).filter((m) => m.t >= lo && m.t <= hi).length);
  if (chart.legend) renderLegend(chart.legend, spec.series.filter((s) => !s.hideEmpty || s.values.some((v) => v)).map((s) => ({ ...s })));
}

function build(chart) {
  const { el, spec } = chart;
  chart.u?.destroy();
  el.replaceChildren();
  const plot = document.createElement("div");
  el.append(plot);
  if (spec.legend !== false) {
    chart.legend = document.createElement("div");
    chart.legend.className = "legend";
    el.append(chart.legend);
  }
  const muted = cssVar("--muted"), grid = cssVar("--grid");
  const half = (spec.grain || 3600) / 2;
  const bars = uPlot.paths.bars({ size: [0.74, 56], gap: 1 });
  const few = spec.x.length < 3;
  const axis = (side, fmt) => ({
    side, stroke: muted, size: 54, gap: 4,
    grid: { show: side === 3, stroke: grid, width: 1 }, ticks: { show: false },
    values: (u, vals) => vals.map((v) => (fmt ? fmt(v) : v)),
  });
  const hasY2 = spec.series.some((s) => s.axis === "y2");
  const opts = {
    width: el.clientWidth || 600,
    height: spec.height || 220,
    padding: [12, hasY2 ? 4 : 14, 0, 2],
    legend: { show: false },
    cursor: { y: false, drag: { x: false, y: false }, points: { size: 7 } },
    tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),
    scales: {
      x: { time: true, range: () => [chart.spec.x[0] - half, chart.spec.x[chart.spec.x.length - 1] + half] },
      y: { range: (u, min, max) => [spec.y?.min ?? 0, spec.y?.max ?? (max > 0 ? max * 1.12 : 1)] },
      y2: { range: (u, min, max) => [spec.y2?.min ?? Math.max(0, (min ?? 0) - 5), spec.y2?.max ?? max] },
    },
    axes: [
      { stroke: muted, grid: { show: false }, ticks: { show: true, stroke: grid, size: 4 }, gap: 4, space: 64, size: 30,
        values: (u, splits) => splits.map((s) => bucketLabel(s, spec.grain, true)) },
      axis(3, spec.y?.fmt),
      ...(hasY2 ? [{ ...axis(1, spec.y2?.fmt), scale: "y2" }] : []),
    ],
    series: [{}, ...ordered(spec).map((s) => {
      const c = color(s.color);
      return s.type === "line"
        ? { label: s.label, scale: s.axis || "y", stroke: c, width: 2, spanGaps: false, points: { show: few || !!s.points, size: 6, fill: c } }
        : { label: s.label, scale: s.axis || "y", stroke: c, fill: c, width: 0, paths: bars, points: { show: false } };
    })],
    plugins: [tooltip(chart), markers(chart)],
  };
  chart.u = new uPlot(opts, dataOf(spec), plot);
  if (spec.onPick) {
    chart.u.over.classList.add("pickable");
    chart.u.over.addEventListener("click", () => pick(chart));
  }
  describe(chart);
}

const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/** A bucket start (epoch s, UTC) as "Nov 15" (days) or "14:00" / "Nov 15" at midnight (hours). */
export function bucketLabel(t, grain, short = false) {
  const d = new Date(t * 1000);
  const day = `${MONTHS[d.getUTCMonth()]} ${d.getUTCDate()}`;
  if (grain >= 86400) return day;
  const hour = `${String(d.getUTCHours()).padStart(2, "0")}:${String(d.getUTCMinutes()).padStart(2, "0")}`;
  if (short) return d.getUTCHours() === 0 && d.getUTCMinutes() === 0 ? day : hour;
  return `${day} ${hour}`;
}

function pick(chart) {
  const { u, spec } = chart;
  const i = u.cursor.idx;
  if (i == null) return;
  if (spec.stacked) {
    const value = u.posToVal(u.cursor.top, "y");
    let acc = 0;
    for (let k = 0; k < spec.series.length; k++) {
      acc += spec.series[k].values[i] || 0;
      if (value <= acc) return spec.onPick(k, i);
    }
    return;
  }
  spec.onPick(0, i);
}

function markersIn(spec, t0, t1) {
  return (spec.markers || []).filter((m) => m.t >= t0 && m.t < t1);
}

function tooltip(chart) {
  let tip;
  return {
    hooks: {
      init: (u) => {
        tip = document.createElement("div");
        tip.className = "tip";
        tip.hidden = true;
        u.over.append(tip);
        u.over.addEventListener("mouseleave", () => (tip.hidden = true));
      },
      setCursor: (u) => {
        const i = u.cursor.idx;
        const spec = chart.spec;
        if (i == null || u.cursor.left < 0) return void (tip.hidden = true);
        const t = spec.x[i];
        const rows = spec.series.map((s) => {
          const v = s.values[i];
          const shown = v == null ? "–" : (s.fmt || spec.y?.fmt || String)(v);
          return `<div class="row"><span class="swatch" data-c="${esc(s.color)}"></span>${esc(s.label)}<span class="v">${esc(shown)}</span></div>`;
        });
        const ms = markersIn(spec, t, t + (spec.grain || 0)).map((m) => `<div class="marker">◆ ${esc(m.label)}</div>`);
        tip.innerHTML = `<div class="t">${esc(bucketLabel(t, spec.grain || 3600))}${spec.grain < 86400 ? " UTC" : ""}</div>${rows.join("")}${ms.join("")}`;
        for (const s of tip.querySelectorAll(".swatch")) s.style.background = color(s.dataset.c);
        tip.hidden = false;
        const x = u.cursor.left, w = tip.offsetWidth;
        tip.style.left = Math.max(0, x + 14 + w > u.over.clientWidth ? x - w - 14 : x + 14) + "px";
        tip.style.top = "6px";
      },
    },
  };
}

function markers(chart) {
  return {
    hooks: {
      draw: (u) => {
        const spec = chart.spec;
        if (!spec.markers?.length) return;
        const ctx = u.ctx, dpr = devicePixelRatio || 1, c = cssVar("--c-marker");
        const { left, top, width, height } = u.bbox;
        ctx.save();
        ctx.strokeStyle = c;
        ctx.fillStyle = c;
        ctx.lineWidth = 1.5 * dpr;
        ctx.setLineDash([4 * dpr, 3 * dpr]);
        ctx.font = `${11 * dpr}px system-ui, sans-serif`;
        let lastLabel = -Infinity;
        for (const m of [...spec.markers].sort((a, b) => a.t - b.t)) {
          const x = Math.round(u.valToPos(m.t, "x", true));
          if (x < left || x > left + width) continue;
          ctx.beginPath();
          ctx.moveTo(x, top);
          ctx.lineTo(x, top + height);
          ctx.stroke();
          ctx.beginPath();
          ctx.moveTo(x, top - 2 * dpr);
          ctx.lineTo(x + 4 * dpr, top + 3 * dpr);
          ctx.lineTo(x, top + 8 * dpr);
          ctx.lineTo(x - 4 * dpr, top + 3 * dpr);
          ctx.fill();
          const label = m.short || m.label;
          const textWidth = ctx.measureText(label).width;
          if (x - lastLabel < textWidth + 14 * dpr) continue; // too close to the previous label: line only
          const tx = x + 6 * dpr + textWidth > left + width ? x - 6 * dpr - textWidth : x + 6 * dpr;
          ctx.fillText(label, tx, top + 8 * dpr);
          lastLabel = x;
        }
        ctx.restore();
      },
    },
  };
}

/**
 * Horizontal bars as SVG. rows: [{label, value, display, href, color, title}].
 */
export function barList(el, rows, { color: fill = "--c1", max } = {}) {
  const chart = {
    rebuild() { draw(); },
    resize() { if (el.clientWidth && Math.abs(el.clientWidth - (chart.width || 0)) > 1) draw(); },
  };
  const NS = "http://www.w3.org/2000/svg";
  const node = (tag, attrs, parent) => {
    const n = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    parent?.append(n);
    return n;
  };
  function draw() {
    el.classList.add("bars");
    el.replaceChildren();
    if (!rows.length) {
      el.dataset.points = "0";
      const empty = document.createElement("div");
      empty.className = "empty";
      empty.textContent = "Nothing in this period";
      return el.append(empty);
    }
    const width = (chart.width = el.clientWidth || 400);
    const rowH = 32;
    const top = Math.max(max ?? 0, ...rows.map((r) => r.value)) || 1;
    const svg = node("svg", { viewBox: `0 0 ${width} ${rows.length * rowH}`, height: rows.length * rowH, role: "img" }, el);
    rows.forEach((r, i) => {
      const parent = r.href ? node("a", { href: r.href }, svg) : svg;
      const g = node("g", { class: "row", transform: `translate(0 ${i * rowH})` }, parent);
      node("title", {}, g).textContent = r.title || `${r.label}: ${r.display ?? r.value}`;
      node("rect", { class: "hit", x: 0, y: 0, width, height: rowH, fill: "transparent" }, g); // the whole row takes clicks
      node("text", { class: "bar-label", x: 0, y: 12 }, g).textContent = r.label;
      node("text", { class: "bar-value", x: width, y: 12, "text-anchor": "end" }, g).textContent = r.display ?? String(r.value);
      node("rect", { class: "bar-track", x: 0, y: 18, width, height: 7, rx: 3.5 }, g);
      node("rect", { class: "bar", x: 0, y: 18, width: Math.max(2, (r.value / top) * width), height: 7, rx: 3.5, fill: color(r.color || fill) }, g);
    });
    el.dataset.points = String(rows.filter((r) => r.value > 0).length);
  }
  el.__chart = chart;
  charts.add(chart);
  onResize.observe(el);
  draw();
  return chart;
}

export function forget(el) {
  if (el.__chart) {
    el.__chart.u?.destroy();
    charts.delete(el.__chart);
    onResize.unobserve(el);
    delete el.__chart;
  }
}

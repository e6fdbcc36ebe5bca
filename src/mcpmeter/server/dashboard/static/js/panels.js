// Panels shared by the overview and the tool page: KPI cards, the time charts built from
// /v1/usage/timeseries and /v1/usage/users, error tables, server events, live increments.

import { dimensions, getJSON, toolURL } from "./api.js";
import { barList, PALETTE, timeChart } from "./charts.js";
import { change, compact, esc, int, ms, pct, when } from "./format.js";
import { connectLive } from "./live.js";

export const secs = (iso) => Date.parse(iso) / 1000;
export const grainSeconds = (grain) => (grain === "hour" ? 3600 : 86400);

/** One KPI card's content: the figure (raw value kept in data-value for checks) and a sub-line. */
export function kpi(el, { value, shown, sub }) {
  const v = el.querySelector(".value");
  const changed = v.dataset.value !== undefined && v.dataset.value !== String(value);
  v.dataset.value = value == null ? "" : String(value);
  v.textContent = shown;
  if (changed) {
    v.classList.remove("flash");
    void v.offsetWidth; // restart the animation
    v.classList.add("flash");
  }
  el.querySelector(".sub").innerHTML = sub;
}

export function kpiCards(s) {
  const lat = s.latency_ms || {};
  const vs = (now, value, options) => (now ? change(value, options) : ""); // nothing now: nothing to compare
  return {
    users: { value: s.users, shown: int(s.users),
             sub: `${vs(s.users, s.change?.users)} <span>${int(s.new_users)} new · ${int(s.returning_users)} returning</span>` },
    calls: { value: s.calls, shown: int(s.calls), sub: `${vs(s.calls, s.change?.calls)} <span>${int(s.calls_last_7d)} in the last 7 days</span>` },
    success_rate: { value: s.success_rate, shown: pct(s.success_rate),
                    sub: `${vs(s.calls, s.change?.success_rate, { kind: "points" })} <span>${int(s.failures ?? s.errors)} failures${
                      s.outcomes?.caller_error ? ` · ${int(s.outcomes.caller_error)} caller errors` : ""}${
                      s.outcomes?.cancelled ? ` · ${int(s.outcomes.cancelled)} cancelled` : ""}</span>` },
    p95: { value: lat.p95, shown: ms(lat.p95),
           sub: `${vs(lat.p95, s.change?.p95_ms, { higherIsBetter: false })} <span>p50 ${ms(lat.p50)} · p99 ${ms(lat.p99)}</span>` },
  };
}

export const KPI_LAYOUT = `
  <section class="card kpi span-3" id="kpi-users"><div class="label">Distinct users</div><div class="value" data-kpi="users">–</div><div class="sub"></div></section>
  <section class="card kpi span-3" id="kpi-calls"><div class="label">Tool calls</div><div class="value" data-kpi="calls">–</div><div class="sub"></div></section>
  <section class="card kpi span-3" id="kpi-success_rate"><div class="label">Success rate</div><div class="value" data-kpi="success_rate">–</div><div class="sub"></div></section>
  <section class="card kpi span-3" id="kpi-p95"><div class="label">Latency p95</div><div class="value" data-kpi="p95">–</div><div class="sub"></div></section>`;

export function renderKpis(summary) {
  for (const [name, card] of Object.entries(kpiCards(summary))) kpi(document.getElementById("kpi-" + name), card);
}

export function markerSpecs(markers) {
  return (markers || []).map((m) => ({
    t: secs(m.ts), short: m.type.replace("_", " "),
    label: `${m.type.replace("_", " ")} · ${m.server}${m.version ? " " + m.version : ""}${m.message ? " — " + m.message : ""}`,
  }));
}

const pctFmt = (v) => (v == null ? "–" : `${(+v).toFixed(v >= 99.95 || v < 10 ? 0 : 1)}%`);
const intFmt = (v) => (Number.isInteger(v) ? compact(v) : v == null ? "–" : "");
const msFmt = (v) => (v == null ? "–" : v >= 1000 ? `${+(v / 1000).toFixed(1)} s` : `${+v.toFixed(v < 10 ? 1 : 0)} ms`);

/** Chart specs from a timeseries answer: calls (stacked by tool), errors + success rate, latency. */
export function timeSpecs(ts, filters, { stackByTool = true } = {}) {
  const x = ts.points.map((p) => secs(p.t));
  const grain = grainSeconds(ts.grain);
  const markers = markerSpecs(ts.markers);
  let series;
  if (stackByTool && ts.tools.length) {
    series = ts.tools.map((tool, i) => ({
      label: tool, type: "bar", color: PALETTE[i % PALETTE.length], fmt: int, tool,
      href: toolURL(tool, filters), values: ts.points.map((p) => p.by_tool[tool] || 0),
    }));
    series.push({ label: "other tools", type: "bar", color: "--c-other", fmt: int, hideEmpty: true,
                  values: ts.points.map((p) => p.calls - ts.tools.reduce((n, t) => n + (p.by_tool[t] || 0), 0)) });
  } else {
    series = [{ label: "calls", type: "bar", color: "--c1", fmt: int, values: ts.points.map((p) => p.calls) }];
  }
  return {
    calls: { x, grain, markers, stacked: true, series, y: { fmt: intFmt } },
    errors: {
      x, grain, markers, y: { fmt: intFmt }, y2: { fmt: pctFmt, max: 100 },
      series: [
        { label: "errors", type: "bar", color: "--c-error", fmt: int, values: ts.points.map((p) => p.errors) },
        { label: "success rate", type: "line", axis: "y2", color: "--c-ok", fmt: (v) => pctFmt(v),
          values: ts.points.map((p) => (p.success_rate == null ? null : +(p.success_rate * 100).toFixed(2))) },
      ],
    },
    latency: {
      x, grain, markers, y: { fmt: msFmt },
      series: ["p50", "p95", "p99"].map((k) => ({
        label: k, type: "line", color: `--c-${k}`, fmt: ms, values: ts.points.map((p) => p[`${k}_ms`]),
      })),
    },
  };
}

export function usersSpec(u, markers) {
  return {
    x: u.points.map((p) => secs(p.t)), grain: grainSeconds(u.grain), markers: markerSpecs(markers), stacked: true,
    y: { fmt: intFmt },
    series: [
      { label: "returning", type: "bar", color: "--c-returning", fmt: int, values: u.points.map((p) => p.returning_users) },
      { label: "new", type: "bar", color: "--c-new", fmt: int, values: u.points.map((p) => p.new_users) },
    ],
  };
}

/** Draw or update a chart in place (keeps the canvas when only the numbers change). */
export function chart(id, spec) {
  const el = document.getElementById(id);
  if (el.__chart?.update) el.__chart.update(spec);
  else timeChart(el, spec);
}

export function bars(id, rows, options) {
  barList(document.getElementById(id), rows, options);
}

/** ok / (ok + tool and server errors): caller errors and cancelled calls count on neither side (analytics.md). */
function rate(calls, errors, caller, cancelled) {
  const ok = calls - errors - cancelled, judged = ok + errors - caller;
  return judged ? ok / judged : null;
}

/** Apply a live message to the loaded answers; returns false when the window has moved on. */
export function applyLive(message, data) {
  const ts = data.timeseries, summary = data.summary;
  if (!ts || !summary) return true;
  const start = Date.parse(ts.from), end = Date.parse(ts.to), grainMs = grainSeconds(ts.grain) * 1000;
  let fresh = true, calls = 0, errors = 0, caller = 0, cancelled = 0;
  for (const [minute, server, tool, n, e, c = 0, x = 0] of message.counts) {
    if (minute >= end) fresh = false;
    if (minute < start || minute >= end) continue;
    calls += n;
    errors += e;
    caller += c;
    cancelled += x;
    const p = ts.points[Math.floor((minute - start) / grainMs)];
    if (!p) continue;
    p.calls += n;
    p.errors += e;
    p.caller_errors = (p.caller_errors || 0) + c;
    p.cancelled = (p.cancelled || 0) + x;
    p.failures = (p.failures ?? 0) + e - c;
    p.success_rate = rate(p.calls, p.errors, p.caller_errors, p.cancelled);
    if (ts.tools.includes(tool)) p.by_tool[tool] = (p.by_tool[tool] || 0) + n;
    const row = summary.tools?.find((r) => r.tool === tool && r.server === server);
    if (row) row.calls += n;
  }
  if (calls) {
    const o = summary.outcomes || { ok: 0, tool_error: 0, server_error: 0, caller_error: 0, cancelled: 0 };
    summary.calls += calls;
    summary.errors += errors;
    summary.failures = (summary.failures ?? 0) + errors - caller;
    summary.calls_last_7d += calls;
    o.ok += calls - errors - cancelled;
    o.caller_error += caller;
    o.cancelled += cancelled;
    o.tool_error += errors - caller; // tool or server: the next exact read splits them
    summary.outcomes = o;
    const r = rate(summary.calls, summary.errors, o.caller_error, o.cancelled);
    summary.success_rate = r == null ? null : +r.toFixed(4);
  }
  return fresh;
}

export function errorsTable(id, recent, filters, { showTool = true } = {}) {
  const el = document.getElementById(id);
  if (!recent.length) {
    el.innerHTML = `<div class="empty">No errors in this period</div>`;
    return;
  }
  el.innerHTML = `<table><thead><tr><th>When</th>${showTool ? "<th>Tool</th>" : ""}<th>Error</th><th class="wide-only">Client</th></tr></thead><tbody>${
    recent.map((r) => `<tr class="${showTool && r.tool ? "clickable" : ""}" data-href="${r.tool ? esc(toolURL(r.tool, filters, r.server)) : ""}">
      <td class="num">${esc(when(r.ts))}</td>
      ${showTool ? `<td><b>${esc(r.tool || r.kind)}</b><span class="msg">${esc(r.server)}</span></td>` : ""}
      <td><span class="pill err">${esc(r.error_type || "error")}</span><span class="msg" title="${esc(r.error_message || "")}">${esc(r.error_message || "")}</span></td>
      <td class="wide-only">${esc(r.client || "–")}</td></tr>`).join("")}</tbody></table>`;
  for (const tr of el.querySelectorAll("tr.clickable")) tr.addEventListener("click", () => location.assign(tr.dataset.href));
}

export function markersList(id, markers) {
  const el = document.getElementById(id);
  el.innerHTML = markers.length
    ? [...markers].reverse().map((m) => `<li><span class="pill type">${esc(m.type.replace("_", " "))}</span>
        <b>${esc(m.server)}</b>${m.version ? ` <span class="muted">${esc(m.version)}</span>` : ""}
        ${m.message ? `<span class="muted">${esc(m.message)}</span>` : ""}<span class="when">${esc(when(m.ts))}</span></li>`).join("")
    : `<li class="empty">No deploys, restarts or config changes in this period</li>`;
}

export function panelError(id, error) {
  const el = document.getElementById(id);
  if (el) el.innerHTML = `<div class="error-note">Could not load: ${esc(error.message)}${error.hint ? ` — ${esc(error.hint)}` : ""}</div>`;
}

// A load is finished: charts are on screen (marked once, for the first-load benchmark) and the
// page says which load it shows (tests wait for it). A superseded load says nothing.
let drawnMarked = false;
export async function finishLoad(page, generation) {
  if (generation !== page.generation) return;
  await new Promise(requestAnimationFrame);
  if (!drawnMarked) {
    performance.mark("mcpmeter:charts-drawn");
    drawnMarked = true;
  }
  page.ready = true;
  document.body.dataset.ready = String(generation);
}

// The load and live cycle a page of panels goes through (the overview and the tool page):
// one JSON request per panel, each drawn as its answer arrives; live messages move the feed,
// counters and charts at once (``redraw``), and the exact figures are re-read a few seconds
// after a burst (distinct users and percentiles cannot be added up in the browser).
// ``filters`` is a function: the filter bar replaces the page's filters.
export function panelPage({ page, panels, targets, data, filters, feed, redraw, also = () => [] }) {
  let refreshTimer = null;
  let frame = 0;
  let closeLive = null;
  let liveKey = null;

  async function load() {
    const generation = ++page.generation;
    page.ready = false;
    const jobs = Object.keys(panels).map(async (name) => {
      try {
        const answer = await getJSON(`/v1/usage/${name}`, filters());
        if (generation !== page.generation) return;
        data[name] = answer;
        panels[name](answer);
      } catch (error) {
        if (generation === page.generation && error.status !== 401) panelError(targets[name], error);
      }
    });
    await Promise.all([...jobs, ...also()]);
    await finishLoad(page, generation);
  }

  function refreshSoon(delay) {
    if (refreshTimer) return;
    refreshTimer = setTimeout(() => { refreshTimer = null; load(); }, delay);
  }

  function onCalls(message) {
    feed.add(message.recent);
    const fresh = applyLive(message, data);
    if (!frame) frame = requestAnimationFrame(() => { frame = 0; redraw(); });
    refreshSoon(fresh ? 8000 : 0);
  }

  function reconnect() {
    const key = JSON.stringify(dimensions(filters()));
    if (key === liveKey) return;
    liveKey = key;
    closeLive?.();
    closeLive = connectLive(filters(), { onCalls, onResync: () => refreshSoon(0) });
  }

  return { load, reconnect };
}

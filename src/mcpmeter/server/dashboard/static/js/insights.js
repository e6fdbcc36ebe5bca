// Panels beyond the calls themselves: tool categories, the activation funnel with each listed
// tool's context cost, other usage actions, caller errors and unknown tools, and one chart per
// custom metric (hourly or daily min / avg / max with server events as markers).
// Each renderer takes one answer of the usage API (/v1/usage/<question>).

import { overviewURL, toolURL } from "./api.js";
import { barList, forget } from "./charts.js";
import { esc, int, pct } from "./format.js";
import { chart, grainSeconds, markerSpecs, secs } from "./panels.js";

export const INSIGHTS_LAYOUT = `
  <section class="card span-4"><h2>Categories <span class="aside">calls · success</span></h2><div id="chart-categories" data-chart="categories"></div></section>
  <section class="card span-4"><h2>Other actions <span class="aside">count · users</span></h2><div id="chart-actions" data-chart="actions"></div></section>
  <section class="card span-4"><h2>Caller errors <span class="aside">not counted against success</span></h2><ul class="list" id="caller-errors"></ul></section>
  <section class="card span-6"><h2>Activation <span class="aside">opened → listed tools → called a tool</span></h2><div class="table-wrap" id="activation"></div></section>
  <section class="card span-6"><h2>Context cost of listed tools <span class="aside">tokens ≈ bytes / 4</span></h2><div class="table-wrap" id="context-cost"></div></section>
  <section class="card span-12"><h2>Custom metrics <span class="aside">min · avg · max per bucket</span></h2><div class="metrics" id="metrics"></div></section>`;

export function categoriesPanel(c, filters) {
  barList(document.getElementById("chart-categories"), c.categories.map((r) => ({
    label: r.category ?? "(none)", value: r.calls, display: `${int(r.calls)} · ${pct(r.success_rate)}`,
    href: r.category == null ? null : overviewURL({ ...filters, category: r.category }),
    title: `${r.category ?? "no category"}: ${int(r.calls)} calls by ${int(r.users)} users over ${int(r.tools)} tools, `
      + `${int(r.failures)} failures, ${int(r.outcomes.caller_error)} caller errors`,
  })), { color: "--c4" });
}

export function actionsPanel(a) {
  barList(document.getElementById("chart-actions"), a.by_server.map((r) => ({
    label: `${r.action} · ${r.server}`, value: r.count, display: `${int(r.count)} · ${int(r.users)} users`,
    title: `${r.action} on ${r.server}: ${int(r.count)} events by ${int(r.users)} distinct users`,
  })), { color: "--c5" });
}

export function callerErrorsPanel(e, filters) {
  const el = document.getElementById("caller-errors");
  const caller = e.types.filter((t) => t.outcome === "caller_error");
  const unknown = e.unknown_tools.map((u) => `<li><b>${esc(u.tool)}</b><span class="pill err">no such tool</span>
      <span class="muted">${esc(u.server)}</span><span class="when">${int(u.calls)}×</span></li>`);
  const rest = caller.filter((t) => !e.unknown_tools.some((u) => u.tool === t.tool && u.server === t.server))
    .slice(0, 8).map((t) => `<li>${t.tool ? `<a href="${esc(toolURL(t.tool, filters, t.server))}"><b>${esc(t.tool)}</b></a>` : `<b>–</b>`}
      <span class="pill err">${esc(t.error_type)}</span><span class="muted">${esc(t.server)}</span><span class="when">${int(t.count)}×</span></li>`);
  el.innerHTML = unknown.length || rest.length ? [...unknown, ...rest].join("")
    : `<li class="empty">No caller errors in this period</li>`;
}

export function activationPanel(a, filters) {
  const funnel = document.getElementById("activation");
  funnel.innerHTML = a.servers.length ? `<table><thead><tr><th>Server</th><th class="num">Followed</th><th class="num">Opened</th>
      <th class="num">Listed tools</th><th class="num">Called</th><th class="num">Never called</th></tr></thead><tbody>${
    a.servers.map((s) => `<tr><td><b>${esc(s.server)}</b></td><td class="num">${int(s.followed)}</td><td class="num">${int(s.handshake)}</td>
      <td class="num">${int(s.listed_tools)}</td><td class="num">${int(s.called)} <span class="muted">${pct(s.activation_rate)}</span></td>
      <td class="num" title="${esc(s.probe_clients.map((p) => `${p.client} ×${p.probes}`).join(", "))}">${int(s.probes)}</td></tr>`).join("")}
    </tbody></table><p class="small muted">Followed: sessions, or users where the protocol has no sessions, first seen in the period.
    Those that never call a tool (probes, crawlers) are not counted as users.</p>`
    : `<div class="empty">No sessions or users seen opening a server in this period</div>`;
  const cost = document.getElementById("context-cost");
  const listed = a.tools.filter((t) => t.listed_now);
  cost.innerHTML = listed.length ? `<table><thead><tr><th>Tool</th><th class="num">Tokens</th><th class="num">Bytes</th>
      <th class="num">Calls</th></tr></thead><tbody>${listed.slice(0, 15).map((t) => `<tr class="${t.calls ? "" : "idle"}">
      <td><a href="${esc(toolURL(t.tool, filters, t.server))}"><b>${esc(t.tool)}</b></a> <span class="muted">${esc(t.server)}</span></td>
      <td class="num">${t.definition_tokens == null ? "–" : int(t.definition_tokens)}</td>
      <td class="num">${t.definition_bytes == null ? "–" : int(t.definition_bytes)}</td>
      <td class="num">${t.calls ? int(t.calls) : `<span class="pill err">never</span>`}</td></tr>`).join("")}</tbody></table>`
    : `<div class="empty">No tools/list recorded: the catalog comes from the proxy and meter.instrument()</div>`;
}

/** One chart per metric name: every series of that name (servers, tags) merged per bucket. */
export function metricsPanel(m) {
  const el = document.getElementById("metrics");
  const byName = new Map();
  for (const s of m.series) {
    const buckets = byName.get(s.name) || new Map();
    for (const p of s.points) {
      const b = buckets.get(p.t) || { count: 0, sum: 0, min: null, max: null };
      b.count += p.count;
      b.sum += p.sum;
      b.min = b.min == null ? p.min : Math.min(b.min, p.min);
      b.max = b.max == null ? p.max : Math.max(b.max, p.max);
      buckets.set(p.t, b);
    }
    byName.set(s.name, buckets);
  }
  for (const old of el.querySelectorAll("[data-metric]")) forget(old);
  if (!byName.size) {
    el.innerHTML = `<div class="empty">No custom measurements in this period (POST /v1/measurements)</div>`;
    return;
  }
  const step = grainSeconds(m.grain), start = secs(m.from), end = secs(m.to);
  const x = [];
  for (let t = start; t < end; t += step) x.push(t);
  el.innerHTML = [...byName.keys()].map((name, i) => `<div class="metric"><h3>${esc(name)}</h3>
      <div class="chart" id="metric-${i}" data-metric="${esc(name)}" data-chart="metric"></div></div>`).join("");
  const fmt = (v) => (v == null ? "–" : String(+(+v).toFixed(3)));
  [...byName.entries()].forEach(([name, buckets], i) => {
    const at = (t, k) => {
      const b = buckets.get(new Date(t * 1000).toISOString().replace(".000Z", "Z"));
      return b ? (k === "avg" ? +(b.sum / b.count).toFixed(4) : b[k]) : null;
    };
    const lowest = Math.min(0, ...[...buckets.values()].map((b) => b.min));
    chart(`metric-${i}`, {
      x, grain: step, markers: markerSpecs(m.markers), height: 160, y: { fmt, min: lowest },
      series: ["min", "avg", "max"].map((k, j) => ({
        label: `${name} ${k}`, type: "line", color: ["--c3", "--c1", "--c2"][j], fmt, points: true,
        values: x.map((t) => at(t, k)),
      })),
    });
  });
}

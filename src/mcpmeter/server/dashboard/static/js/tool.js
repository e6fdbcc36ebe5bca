// One tool (/tools/<name>): its calls, errors and success rate, latency, users, error types,
// recent errors and clients over the chosen period, with its own live feed.

import { overviewURL } from "./api.js";
import { rebuildAll } from "./charts.js";
import { filterBar } from "./filters.js";
import { esc, int, pct } from "./format.js";
import { Feed } from "./live.js";
import {
  bars, chart, errorsTable, KPI_LAYOUT, markersList, panelPage, renderKpis, timeSpecs, usersSpec,
} from "./panels.js";
import { initShell } from "./shell.js";

const page = (window.mcpmeter = Object.assign(window.mcpmeter || {}, { generation: 0, ready: false }));
const tool = decodeURIComponent(location.pathname.slice("/tools/".length));
document.title = `${tool} · mcpmeter`;

document.getElementById("main").innerHTML = `
  <div class="page-title"><a href="/" id="back">← Overview</a><h1 id="tool-name">${esc(tool)}</h1><span class="muted" id="tool-servers"></span></div>
  ${KPI_LAYOUT}
  <section class="card span-8"><h2>Calls</h2><div class="chart" id="chart-calls" data-chart="calls"></div></section>
  <section class="card span-4"><h2>Live feed</h2><div id="feed"></div></section>
  <section class="card span-6"><h2>Errors and success rate</h2><div class="chart" id="chart-errors" data-chart="errors"></div></section>
  <section class="card span-6"><h2>Latency p50 · p95 · p99</h2><div class="chart" id="chart-latency" data-chart="latency"></div></section>
  <section class="card span-4"><h2>Error types</h2><div id="chart-error-types" data-chart="error-types"></div></section>
  <section class="card span-4"><h2>Clients <span class="aside">calls</span></h2><div id="chart-clients" data-chart="clients"></div></section>
  <section class="card span-4"><h2>Users: new and returning</h2><div class="chart short" id="chart-users" data-chart="users"></div></section>
  <section class="card span-8"><h2>Recent errors</h2><div class="table-wrap" id="recent-errors"></div></section>
  <section class="card span-4"><h2>Server events</h2><ul class="list" id="markers"></ul></section>`;

let filters;
const data = {};
const withTool = (f) => ({ ...f, tool });
const bar = filterBar(document.getElementById("filters"), { fixed: ["tool"], pinned: { tool }, onChange: (f) => { filters = withTool(f); back(); reconnect(); load(); } });
filters = withTool(bar.filters);
const feed = new Feed(document.getElementById("feed"));

function back() {
  document.getElementById("back").href = overviewURL({ ...filters, tool: null });
}

const panels = {
  summary(s) {
    renderKpis(s);
    bar.setWindow({ from: s.from, to: s.to, grain: s.grain });
    const servers = [...new Set(s.tools.map((t) => t.server))];
    document.getElementById("tool-servers").textContent = servers.length ? "on " + servers.join(", ") : "no calls in this period";
    bar.setOptions({ server: servers });
  },
  timeseries(ts) {
    const specs = timeSpecs(ts, filters, { stackByTool: false });
    chart("chart-calls", specs.calls);
    chart("chart-errors", specs.errors);
    chart("chart-latency", specs.latency);
    markersList("markers", ts.markers);
    if (data.users) panels.users(data.users);
  },
  users(u) {
    chart("chart-users", { ...usersSpec(u, data.timeseries?.markers), height: 180 });
  },
  errors(e) {
    bars("chart-error-types", e.types.map((t) => ({
      label: t.error_type, value: t.count, display: `${int(t.count)} · ${pct(t.share)}`,
      title: `${t.error_type} on ${t.server}: ${int(t.count)}, last ${t.last_seen}`,
    })), { color: "--c-error" });
    errorsTable("recent-errors", e.recent.slice(0, 15), filters, { showTool: false });
  },
  clients(c) {
    bar.setOptions({ client: c.clients.map((r) => r.client).filter((n) => n !== "unknown") });
    bars("chart-clients", c.clients.map((r) => ({
      label: r.client, value: r.calls, display: `${int(r.calls)} · ${pct(r.share)}`,
      title: `${r.client}: ${int(r.calls)} calls, ${int(r.users)} users, ${int(r.errors)} errors`,
    })), { color: "--c2" });
  },
};
const PANEL_TARGET = { summary: "tool-servers", timeseries: "chart-calls", users: "chart-users", errors: "recent-errors", clients: "chart-clients" };

const { load, reconnect } = panelPage({
  page, panels, data, feed, targets: PANEL_TARGET, filters: () => filters,
  redraw() {
    if (data.summary) renderKpis(data.summary);
    if (data.timeseries) panels.timeseries(data.timeseries);
  },
});

addEventListener("mcpmeter:theme", rebuildAll);
initShell("tool").catch(() => {});
back();
reconnect();
load();

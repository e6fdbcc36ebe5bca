// The overview page: KPIs, calls/errors/latency/users over time, top tools, clients,
// protocol versions, recent errors, tools never called, server events, the live feed, and
// the insights panels (categories, other actions, caller errors, activation, context cost, custom metrics).
// One JSON request per panel group; every panel draws as soon as its answer arrives.

import { showAlerts } from "./alerts.js";
import { overviewURL, toolURL } from "./api.js";
import { rebuildAll } from "./charts.js";
import { filterBar } from "./filters.js";
import { esc, int, pct, when } from "./format.js";
import { Feed } from "./live.js";
import {
  bars, chart, errorsTable, KPI_LAYOUT, markersList, panelPage, renderKpis, timeSpecs, usersSpec,
} from "./panels.js";
import { actionsPanel, activationPanel, callerErrorsPanel, categoriesPanel, INSIGHTS_LAYOUT, metricsPanel } from "./insights.js";
import { initShell } from "./shell.js";

const page = (window.mcpmeter = Object.assign(window.mcpmeter || {}, { generation: 0, ready: false }));

document.getElementById("main").innerHTML = `<section class="card span-12 alerts" id="alerts" hidden></section>
  ${KPI_LAYOUT}
  <section class="card span-8"><h2>Calls by tool <span class="aside">click a bar to open the tool</span></h2><div class="chart" id="chart-calls" data-chart="calls"></div></section>
  <section class="card span-4"><h2>Live feed <span class="aside" id="feed-note"></span></h2><div id="feed"></div></section>
  <section class="card span-6"><h2>Errors and success rate</h2><div class="chart" id="chart-errors" data-chart="errors"></div></section>
  <section class="card span-6"><h2>Latency p50 · p95 · p99</h2><div class="chart" id="chart-latency" data-chart="latency"></div></section>
  <section class="card span-6"><h2>Top tools <span class="aside">calls · share</span></h2><div id="chart-tools" data-chart="tools"></div></section>
  <section class="card span-6"><h2>Users: new and returning</h2><div class="chart" id="chart-users" data-chart="users"></div></section>
  <section class="card span-4"><h2>Clients <span class="aside">calls</span></h2><div id="chart-clients" data-chart="clients"></div><ul class="list small" id="client-versions"></ul></section>
  <section class="card span-4"><h2>Protocol versions <span class="aside">sessions</span></h2><div id="chart-protocols" data-chart="protocols"></div></section>
  <section class="card span-4"><h2>Server events</h2><ul class="list" id="markers"></ul></section>
  <section class="card span-8"><h2>Recent errors</h2><div class="table-wrap" id="recent-errors"></div></section>
  <section class="card span-4"><h2>Listed but never called</h2><ul class="list" id="never-called"></ul></section>${INSIGHTS_LAYOUT}`;

let filters;
const data = {};
const bar = filterBar(document.getElementById("filters"), { onChange: (f) => { filters = f; reconnect(); load(); } });
filters = bar.filters;
const feed = new Feed(document.getElementById("feed"), { toolURL: (tool, server) => toolURL(tool, filters, server) });

const panels = {
  summary(s) {
    renderKpis(s);
    bar.setWindow({ from: s.from, to: s.to, grain: s.grain });
    bars("chart-tools", s.tools.map((t) => ({
      label: t.tool, value: t.calls, display: `${int(t.calls)} · ${pct(t.share)}`, href: toolURL(t.tool, filters, t.server),
      title: `${t.tool} on ${t.server}: ${int(t.calls)} calls, ${pct(t.success_rate)} success, ${int(t.users)} users`,
    })));
  },
  timeseries(ts) {
    const specs = timeSpecs(ts, filters);
    specs.calls.onPick = (k) => { const s = specs.calls.series[k]; if (s?.href) location.assign(s.href); };
    chart("chart-calls", specs.calls);
    chart("chart-errors", specs.errors);
    chart("chart-latency", specs.latency);
    markersList("markers", ts.markers);
    if (data.users) panels.users(data.users);
  },
  users(u) {
    chart("chart-users", usersSpec(u, data.timeseries?.markers));
  },
  tools(t) {
    const names = t.tools.map((r) => r.tool).concat(t.never_called.map((r) => r.tool));
    const servers = t.tools.map((r) => r.server).concat(t.never_called.map((r) => r.server));
    const categories = t.tools.map((r) => r.category).concat(t.never_called.map((r) => r.category)).filter((c) => c != null);
    bar.setOptions({ tool: [...new Set(names)], server: [...new Set(servers)], category: [...new Set(categories)] });
    document.getElementById("never-called").innerHTML = t.never_called.length
      ? t.never_called.map((r) => `<li><a href="${esc(toolURL(r.tool, filters, r.server))}"><b>${esc(r.tool)}</b></a>
          <span class="muted">${esc(r.server)}</span><span class="when" title="last listed">listed ${esc(when(r.last_seen))}</span></li>`).join("")
      : `<li class="empty">Every listed tool was called</li>`;
  },
  errors(e) {
    errorsTable("recent-errors", e.recent.slice(0, 12), filters);
    callerErrorsPanel(e, filters);
  },
  categories(c) { categoriesPanel(c, filters); },
  actions(a) { actionsPanel(a); },
  activation(a) { activationPanel(a, filters); },
  measurements(m) { metricsPanel(m); },
  clients(c) {
    bar.setOptions({ client: c.clients.map((r) => r.client).filter((n) => n !== "unknown") });
    bars("chart-clients", c.clients.map((r) => ({
      label: r.client, value: r.calls, display: `${int(r.calls)} · ${pct(r.share)}`,
      href: r.client === "unknown" ? null : overviewURL({ ...filters, client: r.client }),
      title: `${r.client}: ${int(r.calls)} calls, ${int(r.users)} users, ${int(r.errors)} errors`,
    })), { color: "--c2" });
    bars("chart-protocols", c.protocol_versions.map((r) => ({ label: r.protocol_version, value: r.sessions, display: int(r.sessions) })),
      { color: "--c6" });
    document.getElementById("client-versions").innerHTML = c.versions.slice(0, 5)
      .map((v) => `<li><b>${esc(v.client)}</b> <span class="muted">${esc(v.version || "?")}</span><span class="when">${int(v.sessions)} sessions</span></li>`).join("");
  },
};

const PANEL_TARGET = { summary: "chart-tools", timeseries: "chart-calls", users: "chart-users", tools: "never-called",
                       errors: "recent-errors", clients: "chart-clients", categories: "chart-categories", actions: "chart-actions",
                       activation: "activation", measurements: "metrics" };

const { load, reconnect } = panelPage({
  page, panels, data, feed, targets: PANEL_TARGET, filters: () => filters,
  also: () => [showAlerts(document.getElementById("alerts"))],
  redraw() {
    if (data.summary) panels.summary(data.summary);
    if (data.timeseries) panels.timeseries(data.timeseries);
  },
});

addEventListener("mcpmeter:theme", rebuildAll);
initShell("overview").catch(() => {});
reconnect();
load();

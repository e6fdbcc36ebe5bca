// Admin: the project, its API keys (create — shown once —, revoke, last used) and the
// collector's health (ingest rate, rejects, duplicates, drops, writer queue, storage size).

import { getJSON, send } from "./api.js";
import { ago, bytes, esc, int, when } from "./format.js";
import { initShell } from "./shell.js";

const page = (window.mcpmeter = Object.assign(window.mcpmeter || {}, { generation: 0, ready: false }));
document.getElementById("filters").hidden = true;
document.getElementById("main").innerHTML = `
  <section class="card span-4"><h2>Project</h2><div id="project"></div></section>
  <section class="card span-8"><h2>Collector health <span class="aside" id="health-at"></span></h2><div class="stats" id="health"></div></section>
  <section class="card span-12"><h2>API keys</h2>
    <form class="form-row" id="new-key" autocomplete="off">
      <label>Name <input type="text" name="name" required maxlength="64" placeholder="grafana-read"></label>
      <span class="checks">Scopes
        <label><input type="checkbox" name="scope" value="read" checked> read</label>
        <label><input type="checkbox" name="scope" value="ingest"> ingest</label>
        <label><input type="checkbox" name="scope" value="admin"> admin</label></span>
      <label>Expires after (days) <input type="number" name="days" min="1" max="3650" placeholder="never"></label>
      <button type="submit" class="primary">Create key</button>
    </form>
    <p class="error-note" id="key-error" hidden></p>
    <div class="secret" id="secret" hidden></div>
    <div class="table-wrap"><table id="keys"></table></div>
  </section>`;

// The project's own figures; the collector's (all projects together) only for its operators.
const PROJECT_HEALTH = [
  ["events_per_second_1m", "Ingest rate (events/s, 1 min)", (h) => h.ingest.events_per_second_1m.toLocaleString("en-US")],
  ["accepted_since_start", "Accepted since start (project)", (h) => int(h.ingest.accepted_since_start)],
  ["project_live_subscribers", "Live dashboards (project)", (h) => int(h.live_subscribers)],
  ["project_sessions", "Signed-in browsers (project)", (h) => int(h.sessions)],
];
const HEALTH = [
  ["writer_queue_rows", "Writer queue (rows)", (h) => int(h.collector.writer_queue_rows)],
  ["rejected", "Rejected events", (h) => int(h.collector.rejected)],
  ["duplicates", "Duplicates (stored once)", (h) => int(h.collector.duplicates)],
  ["refused_requests", "Refused requests (overload, store down)", (h) => int(h.collector.refused_requests)],
  ["live_messages_dropped", "Live messages dropped", (h) => int(h.collector.live_messages_dropped)],
  ["storage_bytes", "Storage size", (h) => bytes(h.collector.storage_bytes)],
  ["live_subscribers", "Live dashboards", (h) => int(h.collector.live_subscribers)],
  ["writer_commits", "Writer commits", (h) => int(h.collector.writer_commits)],
  ["uptime_seconds", "Up for", (h) => ago(Date.now() - h.collector.uptime_seconds * 1000).replace(" ago", "")],
  ["writer_alive", "Writer", (h) => (h.collector.writer_alive ? "running" : "STOPPED")],
];

async function health() {
  const h = await getJSON("/v1/admin/health");
  const shown = h.collector ? [...PROJECT_HEALTH, ...HEALTH] : PROJECT_HEALTH;
  document.getElementById("health").innerHTML = shown.map(([id, label, f]) =>
    `<div class="stat" data-stat="${id}"><div class="label">${esc(label)}</div><div class="value">${esc(f(h))}</div></div>`).join("");
  document.getElementById("health-at").textContent = "updated " + when(Date.now(), { seconds: true, date: false }) + " UTC";
}

async function project() {
  const { projects } = await getJSON("/v1/admin/projects");
  document.getElementById("project").innerHTML = projects.map((p) => `
    <ul class="list"><li><b id="admin-project">${esc(p.name)}</b><span class="when">since ${esc(when(p.created))}</span></li>
    <li>Active keys<span class="when">${int(p.keys_active)} of ${int(p.keys_total)}</span></li>
    <li>Tool calls, last 30 days<span class="when">${int(p.calls_30d)}</span></li>
    <li>Open live dashboards<span class="when">${int(p.live_subscribers)}</span></li></ul>`).join("");
}

async function keys() {
  const { keys: rows } = await getJSON("/v1/admin/keys");
  const table = document.getElementById("keys");
  table.innerHTML = `<thead><tr><th>Name</th><th>Prefix</th><th>Scopes</th><th class="num">Created</th><th class="num">Last used</th><th class="num">Expires</th><th>State</th><th></th></tr></thead>
    <tbody>${rows.map((k) => `<tr data-key="${esc(k.name)}">
      <td><b>${esc(k.name)}</b></td><td><code>${esc(k.prefix)}…</code></td><td>${esc(k.scopes.join(", "))}</td>
      <td class="num">${esc(when(k.created))}</td><td class="num">${k.last_used ? esc(ago(k.last_used)) : "never"}</td>
      <td class="num">${k.expires ? esc(when(k.expires)) : "–"}</td>
      <td><span class="pill ${k.state === "active" ? "ok" : "err"}">${esc(k.state)}</span></td>
      <td>${k.state === "active" ? `<button type="button" class="danger" data-revoke="${esc(k.prefix)}">Revoke</button>` : ""}</td></tr>`).join("")}</tbody>`;
  for (const button of table.querySelectorAll("[data-revoke]")) {
    button.addEventListener("click", async () => {
      if (button.dataset.armed !== "1") { // a second click confirms
        button.dataset.armed = "1";
        button.textContent = "Confirm revoke";
        return;
      }
      await send("DELETE", "/v1/admin/keys/" + encodeURIComponent(button.dataset.revoke)).catch(showError);
      await keys();
    });
  }
}

function showError(error) {
  const el = document.getElementById("key-error");
  el.textContent = error ? `${error.message}${error.hint ? " — " + error.hint : ""}` : "";
  el.hidden = !error;
}

document.getElementById("new-key").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  showError(null);
  const scopes = [...form.querySelectorAll("[name=scope]:checked")].map((c) => c.value);
  const days = form.elements.days.value ? Number(form.elements.days.value) : null;
  try {
    const made = await send("POST", "/v1/admin/keys", { name: form.elements.name.value.trim(), scopes, expires_days: days });
    const secret = document.getElementById("secret");
    secret.hidden = false;
    secret.innerHTML = `<b>New key “${esc(made.name)}”</b> — copy it now, it is not shown again:<br><code id="new-key-value">${esc(made.key)}</code>
      <button type="button" id="copy-key">Copy</button>`;
    document.getElementById("copy-key").addEventListener("click", () => navigator.clipboard?.writeText(made.key));
    form.reset();
    await Promise.all([keys(), project()]);
  } catch (error) {
    showError(error);
  }
});

async function start() {
  await initShell("admin");
  await Promise.all([project(), keys(), health()]);
  page.ready = true;
  document.body.dataset.ready = "1";
  setInterval(() => health().catch(() => {}), 2000);
}

start().catch((error) => showError(error));

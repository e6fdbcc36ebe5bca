// The alert banner: the conditions of the Prometheus rules (deploy/prometheus/alerts.yml)
// firing now, as the collector computes them from the same definitions (GET /v1/alerts).

import { getJSON } from "./api.js";
import { esc, pct } from "./format.js";

function line(a) {
  const rates = a.error_rate ? " · " + Object.entries(a.error_rate).map(([w, r]) => `${esc(pct(r))} failed over ${esc(w)}`).join(", ") : "";
  const detail = a.detail ? ` · ${esc(a.detail)}` : "";
  return `<li data-alert="${esc(a.alert)}" data-severity="${esc(a.severity)}"><span class="pill ${a.severity === "page" ? "err" : "warn"}">${esc(a.severity)}</span>
    <b>${esc(a.summary)}</b><span class="muted">${rates}${detail}</span> <code class="muted">${esc(a.alert)}</code></li>`;
}

/** Fill `el` with the alerts firing now (hidden when none). */
export async function showAlerts(el) {
  try {
    const answer = await getJSON("/v1/alerts");
    el.hidden = !answer.firing.length;
    el.innerHTML = answer.firing.length
      ? `<h2>Alerts <span class="aside">SLO ${esc(pct(answer.definitions.slo))} success · as in deploy/prometheus/alerts.yml</span></h2><ul class="list">${answer.firing.map(line).join("")}</ul>`
      : "";
  } catch {
    el.hidden = true; // the panels say what is wrong with the collector
  }
}

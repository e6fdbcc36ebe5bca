// The filter bar: period (or a custom from/to range), and one menu per dimension of the
// registry (server, tool, client, …). Every change goes into the URL, so a view can be shared,
// and Back undoes it. The export links download the usage report for the same filters
// (GET /v1/usage/report?…&format=csv|markdown|json: the collector writes the file).

import { DIMENSIONS, FORMATS, PERIODS, queryString, readFilters, writeFilters } from "./api.js";
import { esc, when } from "./format.js";

function toInput(iso) { // "2026-11-01T00:00:00Z" -> "2026-11-01T00:00" (inputs show UTC)
  return iso ? iso.replace(/:\d\dZ$|Z$/, "").slice(0, 16) : "";
}

function fromInput(value) {
  return value ? value + ":00Z" : null;
}

function options(values, selected, all) {
  const list = [...new Set([...(values || []), ...(selected ? [selected] : [])])].sort();
  return `<option value="">${all}</option>` + list.map((v) => `<option value="${esc(v)}"${v === selected ? " selected" : ""}>${esc(v)}</option>`).join("");
}

const FORMAT_LABELS = { csv: "CSV", markdown: "Markdown", json: "JSON" };

/** Links that download the report for `filters` in each format the registry offers. */
function exportLinks(filters) {
  return FORMATS.map((f) => `<a data-export="${esc(f)}" download
    href="/v1/usage/report?${esc(queryString(filters, { format: f }))}">${esc(FORMAT_LABELS[f] || f)}</a>`).join("");
}

/** `fixed`: dimensions the page's path names (no menu), with `pinned` their values (for the export links);
 * `setOptions({server: [...], …})` fills the menus. */
export function filterBar(el, { onChange, fixed = [], pinned = {} }) {
  let filters = readFilters();
  let known = Object.fromEntries(DIMENSIONS.map(({ name }) => [name, []]));
  const menus = DIMENSIONS.filter(({ name }) => !fixed.includes(name));
  const cleared = Object.fromEntries(DIMENSIONS.map(({ name }) => [name, null]));
  let custom = !!filters.from;
  let window_ = null;

  function render() {
    const periods = PERIODS.map((p) => `<button type="button" data-period="${p}" aria-pressed="${!custom && filters.period === p}">${p}</button>`);
    periods.push(`<button type="button" data-period="custom" aria-pressed="${custom}">Custom</button>`);
    const from = filters.from || window_?.from, to = filters.to || window_?.to;
    el.innerHTML = `
      <div class="periods" role="group" aria-label="Period">${periods.join("")}</div>
      <span class="custom" ${custom ? "" : "hidden"}>
        <label>From <input type="datetime-local" id="f-from" value="${esc(toInput(from))}"></label>
        <label>To <input type="datetime-local" id="f-to" value="${esc(toInput(to))}"></label>
        <button type="button" id="f-apply">Apply</button>
      </span>
      ${menus.map((d) => `<label>${esc(d.label)} <select id="f-${esc(d.name)}">${options(known[d.name], filters[d.name], `All ${esc(d.plural)}`)}</select></label>`).join("\n      ")}
      ${DIMENSIONS.some(({ name }) => filters[name]) ? `<button type="button" class="link clear" id="f-clear">Clear filters</button>` : ""}
      <span class="window" id="f-window">${window_ ? describeWindow(window_) : ""}</span>
      <span class="export" role="group" aria-label="Export the report">Export ${exportLinks({ ...filters, ...pinned })}</span>`;
    for (const b of el.querySelectorAll("[data-period]")) b.addEventListener("click", () => period(b.dataset.period));
    el.querySelector("#f-apply").addEventListener("click", applyRange);
    for (const { name } of menus) {
      el.querySelector(`#f-${name}`)?.addEventListener("change", (e) => set({ [name]: e.target.value || null }));
    }
    el.querySelector("#f-clear")?.addEventListener("click", () => set(cleared));
  }

  function describeWindow(w) {
    return `${esc(when(w.from))} → ${esc(when(w.to))} UTC · by ${esc(w.grain)}`;
  }

  function period(p) {
    if (p === "custom") {
      custom = true;
      return render();
    }
    custom = false;
    set({ period: p, from: null, to: null });
  }

  function applyRange() {
    const from = fromInput(el.querySelector("#f-from").value), to = fromInput(el.querySelector("#f-to").value);
    if (!from) return;
    set({ period: null, from, to });
  }

  function set(change) {
    filters = { ...filters, ...change };
    writeFilters(filters);
    render();
    onChange(filters);
  }

  addEventListener("popstate", () => {
    filters = readFilters();
    custom = !!filters.from;
    render();
    onChange(filters);
  });

  render();
  return {
    get filters() { return filters; },
    setOptions(next) {
      const merged = { ...known, ...next };
      if (JSON.stringify(merged) === JSON.stringify(known)) return; // keep what the user is typing
      known = merged;
      render();
    },
    setWindow(w) {
      window_ = w;
      const span = el.querySelector("#f-window");
      if (span) span.innerHTML = describeWindow(w);
    },
  };
}

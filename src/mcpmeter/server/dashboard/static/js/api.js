// The page's view of the collector: filters <-> URL, JSON requests, and the session.
// The filters and periods come from the registry of usage questions (analytics/questions.py),
// which the page embeds as JSON (<script type="application/json" id="registry">).

const REGISTRY = JSON.parse(document.getElementById("registry")?.textContent || '{"filters":[],"periods":[]}');
export const PERIODS = REGISTRY.periods;
export const DEFAULT_PERIOD = REGISTRY.default_period;
/** Every filter, in the order the URLs list them: [{name, kind: "window"|"dimension", label, plural}]. */
export const FILTERS = REGISTRY.filters;
/** The filters that narrow what is counted (server, tool, client, …), as opposed to the time window. */
export const DIMENSIONS = FILTERS.filter((f) => f.kind === "dimension");
/** The formats a usage answer can be downloaded in (`format=`): json, csv, markdown. */
export const FORMATS = REGISTRY.formats || [];

/** The filters in the address bar (the view is shareable: everything is in the query string). */
export function readFilters(search = location.search) {
  const p = new URLSearchParams(search);
  const f = {};
  for (const { name } of FILTERS) f[name] = p.get(name) || null;
  if (!f.from && !f.period) f.period = DEFAULT_PERIOD;
  if (f.from) f.period = null;
  return f;
}

/** Only the dimensions of a filter set (what the live feed filters on). */
export function dimensions(filters) {
  return Object.fromEntries(DIMENSIONS.map(({ name }) => [name, filters[name] ?? null]));
}

export function queryString(filters, extra = {}) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries({ ...filters, ...extra })) if (v != null && v !== "") p.set(k, v);
  return p.toString();
}

/** Put the filters in the URL (push: a new history entry, so Back undoes a filter). */
export function writeFilters(filters, { push = true, path = location.pathname } = {}) {
  const qs = queryString(filters);
  const url = path + (qs ? "?" + qs : "");
  if (url !== location.pathname + location.search) history[push ? "pushState" : "replaceState"](null, "", url);
}

export class ApiError extends Error {
  constructor(message, hint, status) {
    super(message);
    this.hint = hint;
    this.status = status;
  }
}

function toSignIn() {
  location.assign("/signin?next=" + encodeURIComponent(location.pathname + location.search));
}

export async function getJSON(path, params) {
  const qs = params ? queryString(params) : "";
  const response = await fetch(path + (qs ? "?" + qs : ""), { headers: { Accept: "application/json" }, credentials: "same-origin" });
  if (response.status === 401) {
    toSignIn();
    throw new ApiError("signed out", null, 401);
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(body.error || response.statusText, body.hint, response.status);
  return body;
}

/** A change (POST/DELETE): JSON body, and the header that proves it comes from this page. */
export async function send(method, path, body) {
  const response = await fetch(path, {
    method, credentials: "same-origin",
    headers: { "Content-Type": "application/json", Accept: "application/json", "X-MCPMeter-CSRF": "1" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  if (response.status === 401) toSignIn();
  if (!response.ok) throw new ApiError(data.error || response.statusText, data.hint, response.status);
  return data;
}

export const session = () => getJSON("/v1/session");

/** Links that keep the current filters (tool pages drop the tool filter: the path names it). */
export function toolURL(tool, filters, server) {
  const f = { ...filters, tool: null };
  if (server) f.server = server;
  const qs = queryString(f);
  return "/tools/" + encodeURIComponent(tool) + (qs ? "?" + qs : "");
}

export function overviewURL(filters) {
  const qs = queryString(filters);
  return "/" + (qs ? "?" + qs : "");
}

// Live: the collector's Server-Sent Events (/v1/live) and the feed of the latest calls.

import { dimensions, queryString } from "./api.js";
import { esc, ms, when } from "./format.js";

export const state = { connected: false, messages: 0, calls: 0 };
window.mcpmeter = Object.assign(window.mcpmeter || {}, { live: state });

/** Subscribe to accepted calls matching the filters. Returns a function that closes the stream. */
export function connectLive(filters, { onCalls, onResync }) {
  const badge = document.getElementById("live-status");
  const qs = queryString(dimensions(filters));
  const source = new EventSource("/v1/live" + (qs ? "?" + qs : ""));
  let opened = false;
  const status = (on) => {
    state.connected = on;
    if (!badge) return;
    badge.hidden = false;
    badge.classList.toggle("on", on);
    badge.querySelector(".label").textContent = on ? "live" : "reconnecting…";
  };
  source.addEventListener("hello", () => {
    if (opened) onResync(); // we may have missed calls while away
    opened = true;
    status(true);
  });
  source.addEventListener("calls", (event) => {
    const message = JSON.parse(event.data);
    state.messages++;
    state.calls += message.calls;
    onCalls(message);
  });
  source.addEventListener("resync", () => onResync());
  source.addEventListener("error", () => status(false));
  return () => { source.close(); status(false); };
}

/** The newest calls first, at most `limit`; new ones flash. */
export class Feed {
  constructor(el, { limit = 40, toolURL } = {}) {
    this.el = el;
    this.limit = limit;
    this.toolURL = toolURL;
    this.list = document.createElement("ul");
    this.list.className = "feed";
    this.empty = document.createElement("div");
    this.empty.className = "empty";
    this.empty.textContent = "Waiting for calls… new ones appear here as they arrive.";
    el.replaceChildren(this.empty, this.list);
  }

  add(calls) {
    if (!calls.length) return;
    this.empty.hidden = true;
    const items = calls.map((c) => {
      const li = document.createElement("li");
      li.className = "new";
      li.dataset.tool = c.tool || "";
      const status = c.ok ? `<span class="pill ok">ok</span>` : `<span class="pill err" title="${esc(c.error_message || "")}">${esc(c.error_type || "error")}</span>`;
      const name = this.toolURL && c.tool ? `<a class="tool" href="${esc(this.toolURL(c.tool, c.server))}">${esc(c.tool)}</a>` : `<span class="tool">${esc(c.tool || "–")}</span>`;
      li.innerHTML = `<span class="time">${esc(when(c.ts, { seconds: true, date: false }))}</span>`
        + `<span class="what">${name} <span class="meta">${esc(c.server)}${c.client ? " · " + esc(c.client) : ""}</span></span>`
        + `<span class="dur">${c.duration_ms == null ? "" : esc(ms(c.duration_ms))} ${status}</span>`;
      return li;
    });
    this.list.prepend(...items);
    while (this.list.children.length > this.limit) this.list.lastElementChild.remove();
  }
}

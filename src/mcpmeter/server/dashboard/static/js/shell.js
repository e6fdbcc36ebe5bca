// What every signed-in page shares: navigation, who is signed in, sign-out, light/dark toggle.

import { esc } from "./format.js";
import { send, session } from "./api.js";

const dark = matchMedia("(prefers-color-scheme: dark)");

export function theme() {
  return document.documentElement.dataset.theme || (dark.matches ? "dark" : "light");
}

function setTheme(next) {
  document.documentElement.dataset.theme = next;
  try { localStorage.setItem("mcpmeter-theme", next); } catch { /* not saved: fine */ }
  paintToggle();
  dispatchEvent(new CustomEvent("mcpmeter:theme"));
}

function paintToggle() {
  const button = document.getElementById("theme-toggle");
  if (button) button.textContent = theme() === "dark" ? "☀" : "☾";
}

export async function initShell(page) {
  paintToggle();
  document.getElementById("theme-toggle")?.addEventListener("click", () => setTheme(theme() === "dark" ? "light" : "dark"));
  dark.addEventListener("change", () => {
    if (!localStorage.getItem("mcpmeter-theme")) { paintToggle(); dispatchEvent(new CustomEvent("mcpmeter:theme")); }
  });
  const me = await session();
  const admin = me.scopes?.includes("admin");
  const links = [["overview", "/", "Overview"], ...(admin ? [["admin", "/admin", "Admin"]] : [])];
  document.getElementById("nav").innerHTML = links
    .map(([id, href, label]) => `<a href="${href}" class="${id === page ? "active" : ""}">${label}</a>`).join("");
  const who = document.getElementById("who");
  const via = { local: "local", session: "signed in", key: "API key" }[me.via] || "";
  who.innerHTML = `<span class="project-label">project</span><span class="project" id="project-name">${esc(me.project)}</span>`
    + `<span class="badge" title="${me.via === "local" ? "trusted loopback caller (MCPMETER_LOCAL_TRUST)" : "signed in with a key"}">${esc(via)}</span>`
    + (me.via === "session" ? `<button type="button" class="link" id="sign-out">Sign out</button>`
      : me.via === "local" ? `<a href="/signin?next=${encodeURIComponent(location.pathname + location.search)}">Use a key</a>` : "");
  document.getElementById("sign-out")?.addEventListener("click", async () => {
    await send("DELETE", "/v1/session");
    location.assign("/signin");
  });
  return me;
}

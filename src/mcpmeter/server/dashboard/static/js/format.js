// Formatting shared by every page: numbers, rates, durations, times, changes, escaping.

const INT = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });

export function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

export function int(n) {
  return n == null ? "–" : INT.format(n);
}

export function compact(n) {
  if (n == null) return "–";
  const a = Math.abs(n);
  if (a >= 1e9) return (n / 1e9).toFixed(a >= 1e10 ? 0 : 1) + "B";
  if (a >= 1e6) return (n / 1e6).toFixed(a >= 1e7 ? 0 : 1) + "M";
  if (a >= 1e4) return (n / 1e3).toFixed(0) + "k";
  if (a >= 1e3) return (n / 1e3).toFixed(1) + "k";
  return String(Math.round(n * 100) / 100);
}

/** 0.9623 -> "96.2%" */
export function pct(rate) {
  return rate == null ? "–" : (rate * 100).toFixed(1) + "%";
}

/** Milliseconds: "3.4 ms", "214 ms", "1,199 ms". */
export function ms(value) {
  if (value == null) return "–";
  return value < 10 ? value.toFixed(1) + " ms" : INT.format(Math.round(value)) + " ms";
}

export function bytes(n) {
  if (n == null) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

const pad = (n) => String(n).padStart(2, "0");

/** An ISO string or epoch ms as "Nov 21 14:05" (UTC); with seconds for the live feed. */
export function when(value, { seconds = false, date = true } = {}) {
  const d = new Date(value);
  if (Number.isNaN(d.getTime())) return "–";
  const month = d.toLocaleString("en-US", { month: "short", timeZone: "UTC" });
  const time = `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}` + (seconds ? `:${pad(d.getUTCSeconds())}` : "");
  return date ? `${month} ${d.getUTCDate()} ${time}` : time;
}

export function ago(value) {
  const s = Math.round((Date.now() - new Date(value).getTime()) / 1000);
  if (s < 60) return `${Math.max(s, 0)}s ago`;
  if (s < 3600) return `${Math.round(s / 60)}m ago`;
  if (s < 86400) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86400)}d ago`;
}

/**
 * A change against the previous period as a small badge.
 * kind: "relative" (0.12 -> +12%) or "points" (0.004 -> +0.4 pp); higherIsBetter decides the colour.
 */
export function change(value, { kind = "relative", higherIsBetter = true } = {}) {
  if (value == null) return `<span class="change flat" title="nothing to compare with">new</span>`;
  const shown = kind === "points" ? `${(value * 100).toFixed(1)} pp` : `${(value * 100).toFixed(Math.abs(value) < 0.1 ? 1 : 0)}%`;
  const sign = value > 0 ? "+" : value < 0 ? "−" : "±";
  const good = value === 0 ? "flat" : (value > 0) === higherIsBetter ? "good" : "bad";
  const arrow = value > 0 ? "▲" : value < 0 ? "▼" : "";
  return `<span class="change ${good}" title="change against the previous period">${arrow} ${sign}${shown.replace("-", "")}</span>`;
}

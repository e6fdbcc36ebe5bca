// The sign-in page: trade a pasted key for a session cookie, then go where the user was going.

// Where to go afterwards: checked by the collector (sessions.safe_next), never read from the URL here.
const next = document.body.dataset.next || "/";
const form = document.getElementById("signin-form");
const problem = document.getElementById("signin-error");
const need = new URLSearchParams(location.search).get("need");

function show(message) {
  problem.textContent = message;
  problem.hidden = !message;
}

// A link from another site arrives without the (SameSite=Strict) cookie: ask once more from here.
fetch("/v1/session", { credentials: "same-origin", headers: { Accept: "application/json" } })
  .then((r) => r.json())
  .then((me) => {
    const lacksAdmin = need === "admin" && !(me.scopes || []).includes("admin");
    if (me.via === "session" && !lacksAdmin) location.replace(next);
    else if (lacksAdmin) show("That page needs a key with the admin scope.");
    else if (me.via === "local") {
      const note = document.getElementById("signin-note");
      note.textContent = `On this machine the dashboard opens without a key (project "${me.project}"). Sign in to use a key instead.`;
      note.hidden = false;
    }
  })
  .catch(() => {});

// Single sign-on (OpenID Connect), when the collector has it: back to `next` afterwards.
fetch("/v1/oidc", { credentials: "same-origin", headers: { Accept: "application/json" } })
  .then((r) => r.json())
  .then((oidc) => {
    if (!oidc.enabled) return;
    const sso = document.getElementById("signin-sso");
    sso.href = `${oidc.login}?${new URLSearchParams({ next })}`;
    sso.hidden = false;
  })
  .catch(() => {});

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  show("");
  const key = form.elements.key.value.trim();
  const button = document.getElementById("signin-submit");
  button.disabled = true;
  try {
    const response = await fetch("/v1/session", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json", "X-MCPMeter-CSRF": "1" },
      body: JSON.stringify({ key }),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      show(`${body.error || "Sign-in failed"}${body.hint ? " — " + body.hint : ""}`);
      return;
    }
    form.elements.key.value = "";
    location.replace(next);
  } catch (err) {
    show(`The collector did not answer: ${err.message}`);
  } finally {
    button.disabled = false;
  }
});

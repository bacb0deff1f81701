// Processing: the log's head and each consumer's checkpoint and lag per partition, the workers
// (GET /v1/processing, admin keys only), and the dead letters, with a retry (GET /v1/dead-letters,
// POST /v1/dead-letters/{id}/retry; admin and editor keys).

import { api, query } from "../api.js";
import { actionButton, chip, code, fill, h, heading, notice, problem, table, time } from "../dom.js";

const REFRESH_MS = 2000;

export async function render(main, context) {
  const result = h("div", { class: "notice", id: "processing-result", role: "status" });
  const summary = h("div", { class: "stats", id: "processing-summary" });
  const consumers = h("div", { id: "consumers" });
  const workers = h("div", { id: "workers" });
  const dead = h("div", { id: "dead-letters" });
  main.append(
    ...heading("Processing", "How far each consumer has read the log, who holds it, and the events that could not be processed."),
    result,
    summary,
    h("div", { class: "grid" },
      h("section", { class: "card" }, h("h2", {}, "Consumers"), consumers),
      h("section", { class: "card" }, h("h2", {}, "Workers"), workers)),
    h("section", { class: "card" }, h("h2", {}, "Dead letters"), dead),
  );

  async function loadStatus() {
    const status = await api("/v1/processing");
    const lags = status.consumers.map((c) => Number(c.lag) || 0);
    const most = Math.max(1, ...lags);
    fill(
      summary,
      stat(status.head, "log head (seq)"),
      stat(lags.reduce((a, b) => a + b, 0), "events behind, in all"),
      stat(status.workers.length, status.workers.length === 1 ? "worker" : "workers"),
    );
    fill(
      consumers,
      table(
        [
          ["consumer", (c) => c.name],
          ["partition", (c) => (c.partition === null || c.partition === undefined ? "—" : c.partition)],
          ["checkpoint", (c) => h("span", { class: "num" }, c.checkpoint)],
          ["lag", (c) => lagCell(Number(c.lag) || 0, most)],
          ["owner", (c) => (c.owner ? code(c.owner) : chip("nobody", "warn"))],
        ],
        status.consumers,
        { empty: "No consumer has run yet." },
      ),
    );
    fill(workers, table(workerColumns(status.workers), status.workers, { empty: "No worker alive." }));
  }

  async function loadDead() {
    const found = (await api(`/v1/dead-letters${query({ limit: 200 })}`)).data;
    retrying = found.some((d) => d.status === "retrying");
    fill(
      dead,
      table(
        [
          ["when", (d) => time(d.updated_at)],
          ["consumer", (d) => `${d.consumer} · p${d.partition}`],
          ["event", (d) => h("a", { href: `#/events/${encodeURIComponent(d.event_id)}` }, d.event_type)],
          ["seq", (d) => d.seq],
          ["error", (d) => h("span", { class: "error" }, d.error)],
          ["attempts", (d) => d.attempts],
          ["status", (d) => chip(d.status, d.status === "resolved" ? "ok" : d.status === "dead" ? "error" : "warn")],
          ["", (d) => (context.canConfigure && d.status === "dead" ? retryButton(d) : null)],
        ],
        found,
        { empty: "No dead letter: every event was processed.", rowAttrs: (d) => ({ dataset: { id: d.id } }) },
      ),
    );
  }

  let retrying = false; // a dead letter shown as retrying: reloaded until the worker has applied it

  function retryButton(letter) {
    return actionButton("Retry", "small retry", result, async () => {
      const done = await api(`/v1/dead-letters/${encodeURIComponent(letter.id)}/retry`, { method: "POST" });
      notice(result, `Dead letter ${done.id}: ${done.status}.`);
      await loadDead();
    });
  }

  const admin = context.me.role === "admin";
  if (!admin) {
    // The log is shared by every tenant: its head and lags are the whole server's, an admin's to see.
    fill(summary, h("p", { class: "muted", id: "processing-admin-only" },
      "Consumer lag is of the whole server, whose log every tenant shares: sign in with an admin key to see it."));
  }
  await Promise.all([admin ? loadStatus() : null, loadDead()]);
  // Lag moves as the workers read, and a retried dead letter resolves: refresh while the page is open.
  const refresh = () => Promise.all([admin ? loadStatus() : null, retrying ? loadDead() : null]);
  const timer = setInterval(() => refresh().catch((error) => notice(result, problem(error), "error")), REFRESH_MS);
  return () => clearInterval(timer);
}

function stat(value, label) {
  return h("div", { class: "stat" }, h("strong", {}, String(value)), h("span", {}, label));
}

function lagCell(lag, most) {
  const bar = h("span", { class: "lag-bar" });
  bar.style.width = `${Math.round((lag / most) * 80)}px`; // CSSOM, which the CSP allows (no inline style attribute)
  return h("span", {}, h("span", { class: "num" }, String(lag)), " ", lag ? bar : null);
}

function workerColumns(rows) {
  // The worker records' fields as the API gives them: whatever they are, shown as text.
  const names = [...new Set(rows.flatMap((row) => (row && typeof row === "object" ? Object.keys(row) : [])))];
  if (!names.length) return [["worker", (row) => String(row)]];
  return names.map((name) => [name.replaceAll("_", " "), (row) => display(row[name])]);
}

function display(value) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "object") return JSON.stringify(value);
  if (typeof value === "string" && /^\d{4}-\d\d-\d\dT/.test(value)) return time(value);
  return String(value);
}

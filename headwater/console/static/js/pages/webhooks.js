// Webhooks: the endpoints (GET /v1/webhooks), each one's attempts with status and latency
// (GET /v1/webhooks/{id}/attempts), and the deliveries that gave up, with a retry
// (GET /v1/deliveries?status=failed, POST /v1/deliveries/{id}/retry; admin and editor keys).

import { api, query } from "../api.js";
import { actionButton, chip, code, fill, h, heading, notice, problem, table, time } from "../dom.js";

const FOLLOW_ROUNDS = 30; // a second apart: a retried delivery still pending after that is said to be

export async function render(main, context) {
  const result = h("div", { class: "notice", id: "webhooks-result", role: "status" });
  const endpoints = h("div", { id: "endpoints" });
  const attempts = h("section", { class: "card", id: "attempts" }, h("h2", {}, "Attempts"), h("p", { class: "empty" }, "Pick an endpoint to see its attempts."));
  const failed = h("div", { id: "failed-deliveries" });
  main.append(
    ...heading("Webhooks", "Endpoints messages are delivered to, every attempt, and the deliveries that gave up."),
    result,
    h("section", { class: "card" }, h("h2", {}, "Endpoints"), endpoints),
    attempts,
    h("section", { class: "card" }, h("h2", {}, "Failed deliveries"), failed),
  );

  let shownEndpoints = [];

  async function loadEndpoints() {
    const found = (await api("/v1/webhooks")).data;
    shownEndpoints = found;
    fill(
      endpoints,
      table(
        [
          ["url", (e) => h("a", { href: "#", onclick: (ev) => (ev.preventDefault(), showAttempts(e)) }, e.url)],
          ["description", (e) => e.description ?? "—"],
          ["subscriptions", (e) => (e.subscriptions.length ? h("div", { class: "chips" }, e.subscriptions.map((s) => chip(s))) : h("span", { class: "muted" }, "its webhook actions only"))],
          ["state", (e) => (e.enabled ? chip("enabled", "ok") : chip(`disabled${e.disabled_reason ? `: ${e.disabled_reason}` : ""}`, "error"))],
          ["created", (e) => time(e.created_at)],
        ],
        found,
        { empty: "No endpoint registered.", rowAttrs: (e) => ({ dataset: { id: e.id } }) },
      ),
    );
    if (found.length) await showAttempts(found[0]);
  }

  async function showAttempts(endpoint) {
    const found = await api(`/v1/webhooks/${encodeURIComponent(endpoint.id)}/attempts`).catch((error) => error);
    fill(
      attempts,
      h("h2", {}, "Attempts to ", code(endpoint.url)),
      found instanceof Error
        ? h("p", { class: "notice error" }, problem(found))
        : table(
            [
              ["at", (a) => time(a.at)],
              ["delivery", (a) => code(a.delivery_id)],
              ["attempt", (a) => a.attempt],
              ["status", (a) => (a.status_code === null ? chip("no response", "error") : chip(String(a.status_code), a.status_code < 300 ? "ok" : "error"))],
              ["latency", (a) => `${a.latency_ms.toFixed(1)} ms`],
              ["error", (a) => a.error ?? "—"],
            ],
            found.data,
            { empty: "No attempt yet." },
          ),
    );
  }

  async function loadFailed() {
    const found = (await api(`/v1/deliveries${query({ status: "failed", limit: 200 })}`)).data;
    fill(
      failed,
      table(
        [
          ["created", (d) => time(d.created_at)],
          ["delivery", (d) => code(d.id)],
          ["topic", (d) => d.topic],
          ["attempts", (d) => d.attempts],
          ["last status", (d) => (d.last_status === null ? "—" : d.last_status)],
          ["last error", (d) => d.last_error ?? "—"],
          ["", (d) => (context.canConfigure ? retryButton(d) : null)],
        ],
        found,
        { empty: "No failed delivery.", rowAttrs: (d) => ({ dataset: { id: d.id } }) },
      ),
    );
  }

  function retryButton(delivery) {
    return actionButton("Retry", "small retry", result, async () => {
      const done = await api(`/v1/deliveries/${encodeURIComponent(delivery.id)}/retry`, { method: "POST" });
      notice(result, `Delivery ${done.id} queued again (${done.status}).`);
      await loadFailed();
      follow(done.id, 0);
    });
  }

  // A retried delivery, read again a second apart until the worker has sent it (or given up).
  const timers = new Set();
  let stopped = false;
  function follow(id, round) {
    const timer = setTimeout(async () => {
      timers.delete(timer);
      if (stopped) return;
      let found;
      try {
        found = await api(`/v1/deliveries/${encodeURIComponent(id)}`);
      } catch (error) {
        if (!stopped) notice(result, problem(error), "error");
        return;
      }
      if (stopped) return;
      if (found.status === "pending" && round < FOLLOW_ROUNDS) {
        follow(id, round + 1);
        return;
      }
      if (found.status === "delivered") notice(result, `Delivery ${found.id} delivered (attempt ${found.attempts}).`);
      else if (found.status === "failed") notice(result, `Delivery ${found.id} failed again: ${found.last_error ?? found.last_status}.`, "error");
      else notice(result, `Delivery ${found.id} is still pending (attempt ${found.attempts}).`);
      const endpoint = shownEndpoints.find((e) => e.id === found.endpoint_id);
      await Promise.all([loadFailed(), endpoint ? showAttempts(endpoint) : null]).catch((error) => notice(result, problem(error), "error"));
    }, 1000);
    timers.add(timer);
  }

  await Promise.all([loadEndpoints(), loadFailed()]);
  return () => {
    stopped = true;
    for (const timer of timers) clearTimeout(timer);
  };
}

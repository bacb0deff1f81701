// Webhooks: the endpoints (GET /v1/webhooks), each one's attempts with status and latency
// (GET /v1/webhooks/{id}/attempts), and the deliveries that gave up, with a retry
// (GET /v1/deliveries?status=failed, POST /v1/deliveries/{id}/retry; admin and editor keys).

import { api, query } from "../api.js";
import { chip, code, fill, h, heading, notice, problem, table, time } from "../dom.js";

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

  async function loadEndpoints() {
    const found = (await api("/v1/webhooks")).data;
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
    return h("button", {
      type: "button",
      class: "small retry",
      onclick: async (event) => {
        event.target.disabled = true;
        try {
          const done = await api(`/v1/deliveries/${encodeURIComponent(delivery.id)}/retry`, { method: "POST" });
          notice(result, `Delivery ${done.id} queued again (${done.status}).`);
          await loadFailed();
        } catch (error) {
          notice(result, problem(error), "error");
          event.target.disabled = false;
        }
      },
    }, "Retry");
  }

  await Promise.all([loadEndpoints(), loadFailed()]);
}

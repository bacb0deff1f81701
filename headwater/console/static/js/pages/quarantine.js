// The quarantine: rejected items and why (GET /v1/quarantine), and replaying them once the
// cause is fixed (POST /v1/quarantine/replay; admin and editor keys).

import { api, query } from "../api.js";
import { actionButton, chip, code, fill, h, heading, json, notice, problem, table, time } from "../dom.js";

export async function render(main, context) {
  const status = h(
    "select",
    { name: "status", id: "quarantine-status" },
    ["quarantined", "replayed", "all"].map((s) => h("option", { value: s }, s)),
  );
  const type = h("input", { name: "type", placeholder: "any type", spellcheck: "false" });
  const result = h("div", { class: "notice", id: "quarantine-result", role: "status" });
  const list = h("div", { class: "card", id: "quarantine" });
  const filters = h(
    "form",
    { class: "filters" },
    h("label", {}, "Status", status),
    h("label", {}, "Type", type),
    h("button", { type: "submit" }, "Show"),
  );
  main.append(
    ...heading("Quarantine", "Items a schema or a dialect rejected, with their reasons. Fix the cause, then replay."),
    filters,
    result,
    list,
  );

  async function load() {
    const page = await api(`/v1/quarantine${query({ status: status.value, type: type.value.trim(), limit: 200 })}`);
    fill(
      list,
      table(
        [
          ["received", (q) => time(q.received_at)],
          ["type", (q) => h("strong", {}, q.type ?? "—")],
          ["dialect", (q) => q.dialect],
          ["reasons", (q) => h("ul", { class: "reasons" }, q.reasons.map((r) => h("li", {}, code(r.field), ` ${r.code}: ${r.message}`)))],
          ["item", (q) => h("details", {}, h("summary", {}, q.id), json(q.draft ?? q.raw))],
          ["status", (q) => (q.status === "replayed" ? [chip("replayed", "ok"), " ", eventLink(q.replayed_event_id)] : chip("quarantined", "warn"))],
          ["", (q) => (context.canConfigure && q.status === "quarantined" ? replayButton([q.id], "Replay") : null)],
        ],
        page.data,
        { empty: "Nothing in the quarantine.", rowAttrs: (q) => ({ dataset: { id: q.id } }) },
      ),
      context.canConfigure && page.data.some((q) => q.status === "quarantined")
        ? h("p", {}, replayButton(page.data.filter((q) => q.status === "quarantined").map((q) => q.id), "Replay all shown"))
        : null,
    );
  }

  function replayButton(ids, label) {
    return actionButton(label, "small replay", result, async () => {
      const done = await api("/v1/quarantine/replay", { method: "POST", body: { ids } });
      notice(
        result,
        `Replayed ${done.replayed}, duplicates ${done.duplicates}, still rejected ${done.still_rejected}.`,
        done.still_rejected ? "error" : "ok",
      );
      // The events the replay made (or found already there), to open from here.
      const made = done.results.filter((r) => r.event_id);
      if (made.length) result.append(" Events: ", ...made.flatMap((r, i) => (i ? [", ", eventLink(r.event_id)] : [eventLink(r.event_id)])));
      await load();
    });
  }

  filters.addEventListener("submit", (event) => {
    event.preventDefault();
    load().catch((error) => notice(result, problem(error), "error"));
  });
  await load();
}

function eventLink(id) {
  return id ? h("a", { href: `#/events/${encodeURIComponent(id)}`, class: "event-link" }, id) : null;
}

// Triggers: the rules (GET /v1/triggers), switching them on and off (PATCH), each one's recent
// firings (GET /v1/triggers/{id}/firings), and a dry run of a rule on an event (POST /v1/triggers/test).

import { api } from "../api.js";
import { actionButton, chip, fill, h, heading, json, notice, problem, table, time } from "../dom.js";

const SAMPLE_EVENT = { type: "purchase", subject: "cust_123", channel: "pos", data: { amount: 150 } };

export async function render(main, context) {
  const result = h("div", { class: "notice", id: "triggers-result", role: "status" });
  const list = h("div", { id: "triggers" });
  const firings = h("section", { class: "card", id: "firings" }, h("h2", {}, "Recent firings"), h("p", { class: "empty" }, "Pick a trigger to see what it fired."));
  main.append(...heading("Triggers", "Rules run on every event; each firing dispatches its action."), result, h("div", { class: "card" }, list), firings);

  let triggers = [];

  async function load() {
    triggers = (await api("/v1/triggers")).data;
    fill(
      list,
      table(
        [
          ["name", (t) => h("a", { href: "#", onclick: (e) => (e.preventDefault(), showFirings(t)) }, t.name)],
          ["event types", (t) => h("div", { class: "chips" }, t.event_types.map((type) => chip(type)))],
          ["action", (t) => t.action.type],
          ["priority", (t) => t.priority],
          ["window / cooldown", (t) => [t.window ? JSON.stringify(t.window) : "—", t.cooldown ? ` · ${t.cooldown}` : ""]],
          ["state", (t) => (t.enabled ? chip("enabled", "ok") : chip("disabled"))],
          ["", (t) => (context.canConfigure ? toggle(t) : null)],
        ],
        triggers,
        { empty: "No trigger yet.", rowAttrs: (t) => ({ dataset: { id: t.id } }) },
      ),
    );
    fillDryRun();
  }

  function toggle(trigger) {
    return actionButton(trigger.enabled ? "Disable" : "Enable", "small secondary toggle", result, async () => {
      await api(`/v1/triggers/${encodeURIComponent(trigger.id)}`, { method: "PATCH", body: { enabled: !trigger.enabled } });
      notice(result, `${trigger.name}: ${trigger.enabled ? "disabled" : "enabled"}.`);
      await load();
    });
  }

  async function showFirings(trigger) {
    const found = await api(`/v1/triggers/${encodeURIComponent(trigger.id)}/firings`).catch((error) => error);
    fill(
      firings,
      h("h2", {}, `Recent firings of ${trigger.name}`),
      found instanceof Error
        ? h("p", { class: "notice error" }, problem(found))
        : table(
            [
              ["fired", (a) => time(a.created_at)],
              ["event", (a) => h("a", { href: `#/events/${encodeURIComponent(a.event_id)}` }, a.event_id)],
              ["subject", (a) => a.subject ?? "—"],
              ["action", (a) => a.type],
              ["status", (a) => chip(a.status, a.status === "dispatched" ? "ok" : a.status === "failed" ? "error" : "")],
              ["error", (a) => a.error ?? "—"],
            ],
            found.data,
            { empty: "It has not fired yet." },
          ),
    );
  }

  // The dry run: a saved trigger (or a rule written here) against an event written here.
  const dryRun = h("section", { class: "card", id: "dry-run" });
  main.append(dryRun);

  function fillDryRun() {
    if (!context.canConfigure) {
      fill(dryRun, h("h2", {}, "Dry run"), h("p", { class: "muted" }, "A dry run needs an admin or editor key."));
      return;
    }
    const which = h(
      "select",
      { name: "trigger_id" },
      triggers.map((t) => h("option", { value: t.id }, t.name)),
      h("option", { value: "" }, "a rule written below"),
    );
    const rule = h("textarea", { name: "trigger", spellcheck: "false", rows: 7 }, JSON.stringify(
      { name: "try", event_types: ["purchase"], conditions: { field: "data.amount", op: "gt", value: 100 }, action: { type: "recommend" } },
      null,
      2,
    ));
    const event = h("textarea", { name: "event", spellcheck: "false", rows: 7 }, JSON.stringify(SAMPLE_EVENT, null, 2));
    const outcome = h("div", { id: "dry-run-result" });
    const form = h(
      "form",
      {},
      h("div", { class: "grid" }, h("label", {}, "Trigger", which, rule), h("label", {}, "Event", event)),
      h("p", {}, h("button", { type: "submit" }, "Run")),
      outcome,
    );
    form.addEventListener("submit", async (submitted) => {
      submitted.preventDefault();
      let body;
      try {
        body = { event: JSON.parse(event.value), ...(which.value ? { trigger_id: which.value } : { trigger: JSON.parse(rule.value) }) };
      } catch (error) {
        fill(outcome, h("p", { class: "notice error" }, `Not JSON: ${error.message}`));
        return;
      }
      try {
        const answer = await api("/v1/triggers/test", { method: "POST", body });
        fill(
          outcome,
          h("p", {}, answer.matched ? chip("matched", "ok") : chip("no match", "warn")),
          json(answer),
        );
      } catch (error) {
        fill(outcome, h("p", { class: "notice error" }, problem(error)));
      }
    });
    fill(dryRun, h("h2", {}, "Dry run"), h("p", { class: "muted" }, "Would this event fire the trigger? Nothing is stored or sent."), form);
  }

  await load();
}

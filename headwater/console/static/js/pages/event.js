// One event: its fields, its JSON, and what it caused (GET /v1/events/{id}/effects), reloaded
// every second until processing has run (every consumer has passed the event: `processed`), and
// a little after, for the webhook deliveries behind it (sent after processing).

import { api } from "../api.js";
import { code, fill, h, heading, json, problem, table, time } from "../dom.js";

const RELOADS = 30; // a second apart: processing that has not run by then is shown as still pending
const SETTLE = 3; // reloads after processing has run: webhook deliveries are sent after it

export function render(main, context, id) {
  main.append(...heading("Event", null));
  const box = h("div", { class: "detail page", id: "event-detail" });
  main.append(box);
  return showEvent(box, id, context, null);
}

/** Shows event `id` in `box`; `known` is the event when the caller has it. Returns a stop function. */
export function showEvent(box, id, context, known) {
  let timer = null;
  let stopped = false;
  const effects = h("div", { class: "effects", id: "event-effects" }, h("p", { class: "muted" }, "Loading effects…"));
  const body = h("div", {});
  fill(box, body, h("h3", {}, "What it caused"), effects);

  function showFields(event) {
    fill(
      body,
      h("h2", {}, event.type),
      h(
        "dl",
        { class: "fields" },
        [
          ["id", code(event.id)],
          ["seq", event.seq],
          ["subject", event.subject ?? "—"],
          ["source", event.source ?? "—"],
          ["channel", event.channel ?? "—"],
          ["time", time(event.time)],
          ["received", time(event.received_at)],
          ["idempotency key", event.idempotency_key ?? "—"],
        ].map(([name, value]) => [h("dt", {}, name), h("dd", {}, value)]),
      ),
      h("h3", {}, "JSON"),
      json(event),
    );
  }

  async function load(round, settled) {
    if (stopped) return;
    let found;
    try {
      found = await api(`/v1/events/${encodeURIComponent(id)}/effects`);
    } catch (error) {
      if (!stopped) fill(effects, h("p", { class: "notice error" }, problem(error)));
      return;
    }
    if (stopped) return;
    if (round === 0) showFields(found.event);
    const processed = found.processed;
    const next = processed ? settled + 1 : 0;
    const done = next > SETTLE || round >= RELOADS;
    showEffects(effects, found, processed ? null : done ? "Not processed yet: is a worker running?" : "Waiting for processing…");
    if (!done) timer = setTimeout(() => load(round + 1, next), 1000);
  }

  if (known) showFields(known);
  load(0, 0);
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

function showEffects(box, found, pending) {
  fill(
    box,
    pending ? h("p", { class: "muted pending" }, pending) : null,
    h("h4", {}, "Facts"),
    table(
      [
        ["fact", (f) => code(f.fact_id)],
        ["type", (f) => f.fact_type],
        ["participant", (f) => f.participant_id ?? "—"],
      ],
      found.facts,
      { empty: "No fact yet." },
    ),
    h("h4", {}, "Trigger firings"),
    table(
      [
        ["trigger", (f) => f.trigger_name ?? f.trigger_id],
        ["action", (f) => f.type ?? f.action_type],
        ["status", (f) => f.status ?? "—"],
      ],
      found.firings,
      { empty: "No trigger fired." },
    ),
    h("h4", {}, "Actions"),
    table(
      [
        ["action", (a) => code(a.id)],
        ["type", (a) => a.type],
        ["status", (a) => a.status],
        ["error", (a) => a.error ?? "—"],
      ],
      found.actions,
      { empty: "No action." },
    ),
    h("h4", {}, "Webhook deliveries"),
    table(
      [
        ["delivery", (d) => code(d.id)],
        ["topic", (d) => d.topic],
        ["status", (d) => d.status],
        ["attempts", (d) => d.attempts],
      ],
      found.deliveries,
      { empty: "No delivery." },
    ),
  );
}

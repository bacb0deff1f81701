// Live: every event as the log takes it, read from GET /v1/events/live (server-sent events),
// newest at the top; the stream reconnects with the last seq it saw, so nothing is skipped.

import { query, readStream } from "../api.js";
import { chip, fill, h, heading, problem } from "../dom.js";
import { showEvent } from "./event.js";

const KEEP = 500; // rows kept on the page: a busy tenant would otherwise grow it without end

export function render(main, context) {
  const form = h(
    "form",
    { class: "filters", id: "live-filters" },
    field("type", "Type", "any type"),
    field("subject", "Subject", "any subject"),
    field("source", "Source", "any source"),
    h("button", { type: "submit" }, "Apply"),
  );
  const status = chip("connecting", "warn");
  status.id = "live-status";
  const count = h("span", { class: "muted", id: "live-count" }, "0 events");
  const rows = h("tbody", { id: "live-rows" });
  const list = h(
    "table",
    { class: "events clickable" },
    h("thead", {}, h("tr", {}, ["seq", "received", "type", "subject", "source", "channel"].map((t) => h("th", {}, t)))),
    rows,
  );
  const waiting = h("p", { class: "empty", id: "live-empty" }, "Waiting for events… send one and it shows here.");
  const detail = h("aside", { class: "detail", id: "event-detail" }, h("p", { class: "empty" }, "Click an event to see it."));
  main.append(
    ...heading("Live events", "Every event of this tenant and mode as it is stored, in log order (newest first)."),
    form,
    h("div", { class: "bar" }, status, count),
    h("div", { class: "split" }, h("div", { class: "list" }, list, waiting), detail),
  );

  let controller = null;
  let lastSeq = null;
  let seen = 0;
  let stopDetail = null;
  let retryTimer = null;
  let stopped = false;

  function filters() {
    const data = new FormData(form);
    return { type: data.get("type").trim(), subject: data.get("subject").trim(), source: data.get("source").trim() };
  }

  function add(event) {
    seen += 1;
    fill(count, `${seen} event${seen === 1 ? "" : "s"}`);
    waiting.hidden = true;
    const row = h(
      "tr",
      { dataset: { id: event.id, seq: event.seq }, tabindex: 0, onclick: () => open(event, row), onkeydown: (e) => e.key === "Enter" && open(event, row) },
      h("td", { class: "num" }, event.seq),
      h("td", {}, new Date(event.received_at).toLocaleTimeString()),
      h("td", {}, h("strong", {}, event.type)),
      h("td", {}, event.subject ?? "—"),
      h("td", {}, event.source ?? "—"),
      h("td", {}, event.channel ?? "—"),
    );
    rows.prepend(row);
    while (rows.children.length > KEEP) rows.lastElementChild.remove();
  }

  function open(event, row) {
    for (const other of rows.querySelectorAll("tr.selected")) other.classList.remove("selected");
    row.classList.add("selected");
    if (stopDetail) stopDetail();
    stopDetail = showEvent(detail, event.id, context, event);
  }

  async function connect() {
    controller = new AbortController();
    const { signal } = controller;
    try {
      await readStream(`/v1/events/live${query(filters())}`, {
        lastEventId: lastSeq,
        signal,
        onOpen: () => {
          fill(status, "live");
          status.className = "chip ok";
        },
        onEvent: (message) => {
          if (message.event !== "event") return;
          if (message.id) lastSeq = message.id;
          add(JSON.parse(message.data));
        },
      });
    } catch (error) {
      if (signal.aborted) return;
      fill(status, `disconnected: ${problem(error)}`);
      status.className = "chip error";
      if (error.status && error.status < 500 && error.status !== 429) return; // a refusal: retrying changes nothing
    }
    if (signal.aborted || stopped) return;
    fill(status, "reconnecting");
    status.className = "chip warn";
    retryTimer = setTimeout(connect, 1000);
  }

  function restart() {
    if (controller) controller.abort();
    clearTimeout(retryTimer);
    lastSeq = null; // a new filter starts from now
    seen = 0;
    fill(count, "0 events");
    rows.replaceChildren();
    waiting.hidden = false;
    fill(status, "connecting");
    status.className = "chip warn";
    connect();
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    restart();
  });
  connect();
  return () => {
    stopped = true;
    clearTimeout(retryTimer);
    if (controller) controller.abort();
    if (stopDetail) stopDetail();
  };
}

function field(name, label, placeholder) {
  return h("label", {}, label, h("input", { name, placeholder, spellcheck: "false", autocomplete: "off" }));
}

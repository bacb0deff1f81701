// The event catalog: every type the tenant sent (GET /v1/event-types) beside its schema, if any
// (GET /v1/schemas): counts, first and last seen, properties and their JSON types, enforcement.

import { api } from "../api.js";
import { chip, h, heading, json, table, time } from "../dom.js";

const ENFORCEMENT = { strict: "error", soft: "warn", off: "" };

export async function render(main) {
  const [types, schemas] = await Promise.all([api("/v1/event-types"), api("/v1/schemas")]);
  const bySchema = new Map(schemas.data.map((s) => [s.type, s]));
  const named = new Set(types.data.map((t) => t.type));
  const rows = [...types.data, ...schemas.data.filter((s) => !named.has(s.type)).map((s) => ({ type: s.type }))];
  main.append(
    ...heading("Event catalog", "Every event type sent in this tenant and mode, with its properties and its schema."),
    h(
      "div",
      { class: "card", id: "catalog" },
      table(
        [
          ["type", (t) => h("strong", {}, t.type)],
          ["events", (t) => h("span", { class: "num" }, t.count ?? 0)],
          ["first seen", (t) => time(t.first_seen)],
          ["last seen", (t) => time(t.last_seen)],
          ["violations", (t) => (t.violations ? chip(String(t.violations), "warn") : "0")],
          ["properties", (t) => properties(t.properties || {})],
          ["schema", (t) => schema(bySchema.get(t.type))],
        ],
        rows,
        { empty: "No event sent yet.", rowAttrs: (t) => ({ dataset: { type: t.type } }) },
      ),
    ),
  );
}

function properties(found) {
  const names = Object.keys(found).sort();
  if (!names.length) return h("span", { class: "muted" }, "—");
  return h(
    "div",
    { class: "chips" },
    names.map((name) => chip(`${name}: ${found[name].join(" | ")}`)),
  );
}

function schema(version) {
  if (!version) return h("span", { class: "muted" }, "none");
  return h(
    "details",
    {},
    h("summary", {}, `v${version.version} `, chip(version.enforcement, ENFORCEMENT[version.enforcement] ?? "")),
    json(version.schema),
  );
}

// Building the page. Everything shown is data someone sent (event data, names, reasons), so
// nodes are made with DOM APIs and text goes in as text nodes, never parsed as markup.

/** An element: `attrs` are properties/attributes (`class`, `on*` handlers, `dataset`), children text or nodes. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (value === true) el.setAttribute(name, "");
    else el.setAttribute(name, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A table: `columns` are [heading, row => cell content]; `rows` the data; `empty` the text when none. */
export function table(columns, rows, { empty = "Nothing yet.", rowAttrs } = {}) {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  return h(
    "table",
    {},
    h("thead", {}, h("tr", {}, columns.map(([heading]) => h("th", {}, heading)))),
    h(
      "tbody",
      {},
      rows.map((row) => h("tr", rowAttrs ? rowAttrs(row) : {}, columns.map(([, cell]) => h("td", {}, cell(row))))),
    ),
  );
}

/** JSON, pretty-printed, as text. */
export function json(value) {
  return h("pre", { class: "json" }, JSON.stringify(value, null, 2));
}

/** A time as the browser's local time, with the stored value as its tooltip. */
export function time(value) {
  if (!value) return "—";
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  return h("time", { datetime: value, title: value }, date.toLocaleString());
}

export function code(text) {
  return h("code", {}, text ?? "—");
}

export function chip(text, kind = "") {
  return h("span", { class: `chip ${kind}`.trim() }, text);
}

/** A page's heading and its intro line, if any: nodes only, as `Element.append` would show a
 * null as the text "null". */
export function heading(title, intro) {
  return intro ? [h("h1", {}, title), h("p", { class: "intro" }, intro)] : [h("h1", {}, title)];
}

/** A message line under an action: `kind` is "ok" or "error". */
export function notice(el, text, kind = "ok") {
  fill(el, text);
  el.className = `notice ${kind}`;
}

/**
 * A button that runs `action` on a click: disabled while it runs (no second click sends it
 * twice), enabled again if it fails, with the error shown in `result`.
 */
export function actionButton(label, cls, result, action) {
  return h("button", {
    type: "button",
    class: cls,
    onclick: async (event) => {
      event.target.disabled = true;
      try {
        await action();
      } catch (error) {
        notice(result, problem(error), "error");
        event.target.disabled = false;
      }
    },
  }, label);
}

/** The text of an API error, for a notice. */
export function problem(error) {
  if (error && error.status) {
    const details = (error.body && error.body.details) || [];
    const parts = details.map((d) => `${d.field}: ${d.message}`);
    const message = (error.body && error.body.error) || error.message;
    return `${error.status}: ${message}${parts.length ? ` (${parts.join("; ")})` : ""}`;
  }
  return String((error && error.message) || error);
}

/** A section with a heading and a body that can be re-filled. */
export function section(title, ...children) {
  return h("section", { class: "card" }, h("h2", {}, title), ...children);
}

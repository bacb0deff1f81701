// Charts from GET /v1/stats: events taken per minute and rejections by reason, drawn as SVG
// here (no chart library: a few rectangles and labels).

import { api, query } from "../api.js";
import { fill, h, heading, problem } from "../dom.js";

const SVG = "http://www.w3.org/2000/svg";
const RANGES = [[60, "last hour"], [360, "last 6 hours"], [1440, "last 24 hours"]];

export async function render(main) {
  const range = h("select", { name: "minutes", id: "stats-minutes" }, RANGES.map(([m, label]) => h("option", { value: m }, label)));
  const ingest = h("div", { id: "ingest-chart" });
  const rejections = h("div", { id: "rejections-chart" });
  main.append(
    ...heading("Charts", "What the tenant sent, minute by minute, and why events were rejected."),
    h("div", { class: "filters" }, h("label", {}, "Range", range)),
    h("section", { class: "card" }, h("h2", {}, "Events accepted per minute"), ingest),
    h("section", { class: "card" }, h("h2", {}, "Rejections by reason"), rejections),
  );
  async function load() {
    const stats = await api(`/v1/stats${query({ minutes: range.value })}`);
    fill(ingest, rateChart(stats.ingest, Number(stats.minutes)));
    fill(rejections, reasonChart(stats.rejections));
  }
  range.addEventListener("change", () => load().catch((error) => fill(ingest, h("p", { class: "notice error" }, problem(error)))));
  await load();
}

function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) el.setAttribute(name, String(value));
  for (const child of children) el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return el;
}

/** A bar per minute over the range (minutes without events are empty bars). The server lists
 * every minute of the range, oldest first: its clock, not the browser's, says which they are. */
function rateChart(points, minutes) {
  const total = points.reduce((sum, p) => sum + p.events, 0);
  const counts = new Map(points.map((p) => [new Date(p.minute).getTime(), p.events]));
  const slots = points.map((p) => new Date(p.minute).getTime());
  const width = 960, height = 240, left = 48, bottom = 28, top = 12;
  const most = Math.max(1, ...slots.map((t) => counts.get(t) || 0));
  const step = (width - left - 8) / slots.length;
  const y = (v) => top + (height - top - bottom) * (1 - v / most);
  const chart = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `${total} events in the last ${minutes} minutes` });
  for (const v of [0, most / 2, most]) {
    chart.append(svg("line", { class: "grid-line", x1: left, x2: width - 8, y1: y(v), y2: y(v) }));
    chart.append(svg("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end" }, Number.isInteger(v) ? v : v.toFixed(1)));
  }
  slots.forEach((t, i) => {
    const v = counts.get(t) || 0;
    if (!v) return;
    const bar = svg("rect", { class: "bar", x: left + i * step + 0.5, y: y(v), width: Math.max(1, step - 1), height: y(0) - y(v) });
    bar.append(svg("title", {}, `${new Date(t).toLocaleTimeString()}: ${v} event${v === 1 ? "" : "s"}`));
    chart.append(bar);
  });
  chart.append(svg("line", { class: "axis", x1: left, x2: width - 8, y1: y(0), y2: y(0) }));
  const labels = 6;
  for (let i = 0; i <= labels; i++) {
    const index = Math.min(slots.length - 1, Math.round((i * (slots.length - 1)) / labels));
    const at = new Date(slots[index]);
    // The first and last labels are anchored at their ends, so neither runs off the chart.
    const anchor = i === 0 ? "start" : i === labels ? "end" : "middle";
    const x = i === 0 ? left : i === labels ? width - 8 : left + index * step + step / 2;
    chart.append(svg("text", { x, y: height - 8, "text-anchor": anchor }, at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })));
  }
  return [h("p", { class: "muted", id: "ingest-total" }, `${total} event${total === 1 ? "" : "s"} in this range.`), chart];
}

/** A horizontal bar per rejection code, most first. */
function reasonChart(rows) {
  if (!rows.length) return h("p", { class: "empty" }, "No event was rejected in this range.");
  const sorted = [...rows].sort((a, b) => b.count - a.count);
  const width = 960, row = 26, left = 220, right = 60;
  const most = Math.max(1, ...sorted.map((r) => r.count));
  const chart = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${sorted.length * row + 8}`, role: "img", "aria-label": "rejections by reason" });
  sorted.forEach((r, i) => {
    const y = 4 + i * row;
    const w = ((width - left - right) * r.count) / most;
    chart.append(svg("text", { x: left - 8, y: y + 16, "text-anchor": "end" }, r.code));
    chart.append(svg("rect", { class: "bar bad", x: left, y: y + 3, width: Math.max(2, w), height: row - 8 }));
    chart.append(svg("text", { class: "value", x: left + w + 6, y: y + 16 }, r.count));
  });
  return chart;
}

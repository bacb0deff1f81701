// Gamification: the points leaderboard (GET /v1/leaderboards/points) and a participant's page
// (#/participants/<id>: GET /v1/participants/{id}): points, level, badges, challenge progress.

import { api, query } from "../api.js";
import { chip, code, fill, h, heading, problem, table, time } from "../dom.js";

const PERIODS = ["all_time", "daily", "weekly", "monthly"];

export async function render(main, context, arg, route) {
  if (route === "participants" && arg) return participant(main, arg);
  const period = h("select", { name: "period", id: "leaderboard-period" }, PERIODS.map((p) => h("option", { value: p }, p.replace("_", " "))));
  const board = h("div", { id: "leaderboard" });
  const lookup = h("form", { class: "filters", id: "participant-lookup" },
    h("label", {}, "Participant", h("input", { name: "participant", placeholder: "user_123", spellcheck: "false", required: true })),
    h("button", { type: "submit" }, "Open"));
  lookup.addEventListener("submit", (event) => {
    event.preventDefault();
    const id = new FormData(lookup).get("participant").trim();
    if (id) location.hash = `#/participants/${encodeURIComponent(id)}`;
  });
  main.append(
    ...heading("Gamification", "Points, levels and badges that challenges and triggers awarded."),
    lookup,
    h("section", { class: "card" }, h("div", { class: "bar" }, h("h2", {}, "Points leaderboard"), period), board),
  );

  async function load() {
    const found = await api(`/v1/leaderboards/points${query({ period: period.value, limit: 50 })}`);
    fill(
      board,
      h("p", { class: "muted", id: "leaderboard-bucket" }, found.bucket && found.bucket !== "all_time" ? `Period ${found.bucket}` : "All time"),
      table(
        [
          ["rank", (r) => h("strong", {}, r.rank)],
          ["participant", (r) => h("a", { href: `#/participants/${encodeURIComponent(r.participant_id)}` }, r.participant_id)],
          ["points", (r) => h("span", { class: "num" }, r.points)],
          ["level", (r) => (r.level === null ? "—" : r.level)],
          ["reached", (r) => time(r.reached_at)],
        ],
        found.data,
        { empty: "No points awarded yet." },
      ),
    );
  }
  period.addEventListener("change", () => load().catch((error) => fill(board, h("p", { class: "notice error" }, problem(error)))));
  await load();
}

async function participant(main, id) {
  main.append(h("p", {}, h("a", { href: "#/gamification" }, "← Leaderboard")));
  let found;
  try {
    found = await api(`/v1/participants/${encodeURIComponent(id)}`);
  } catch (error) {
    if (error.status !== 404) throw error;
    main.append(...heading(id, null), h("p", { class: "empty" }, "No fact of this participant yet."));
    return;
  }
  const challenges = await api("/v1/challenges").then((r) => r.data).catch(() => []);
  const names = new Map(challenges.map((c) => [c.id, c.name]));
  main.append(
    ...heading(found.participant_id, "A participant's standing, as of now."),
    h("div", { class: "stats", id: "participant-summary" },
      h("div", { class: "stat" }, h("strong", {}, String(found.points)), h("span", {}, "points")),
      h("div", { class: "stat" }, h("strong", {}, found.level === null ? "—" : String(found.level)), h("span", {}, "level")),
      h("div", { class: "stat" }, h("strong", {}, String(found.badges.length)), h("span", {}, found.badges.length === 1 ? "badge" : "badges"))),
    h("div", { class: "grid" },
      h("section", { class: "card", id: "participant-badges" }, h("h2", {}, "Badges"),
        table(
          [
            ["badge", (b) => chip(b.badge, "ok")],
            ["awarded", (b) => time(b.awarded_at)],
            ["reason", (b) => code(b.reason)],
          ],
          found.badges,
          { empty: "No badge yet." },
        )),
      h("section", { class: "card", id: "participant-challenges" }, h("h2", {}, "Challenges"),
        table(
          [
            ["challenge", (c) => names.get(c.challenge_id) ?? c.challenge_id],
            ["progress", (c) => [h("progress", { max: c.target, value: Math.min(c.progress, c.target) }), ` ${c.progress} / ${c.target}`]],
            ["completed", (c) => (c.completed_at ? time(c.completed_at) : "—")],
            ["streak", (c) => (c.streak === null ? "—" : c.streak)],
          ],
          found.challenges,
          { empty: "In no challenge yet." },
        ))),
  );
}

// The console's shell: sign-in, the navigation and the hash router (#/live, #/events/<id>, ...).

import { api, forgetKey, keepKey, storedKey } from "./api.js";
import { fill, h, problem } from "./dom.js";
import * as catalog from "./pages/catalog.js";
import * as charts from "./pages/charts.js";
import * as eventPage from "./pages/event.js";
import * as gamification from "./pages/gamification.js";
import * as live from "./pages/live.js";
import * as processing from "./pages/processing.js";
import * as quarantine from "./pages/quarantine.js";
import * as triggers from "./pages/triggers.js";
import * as webhooks from "./pages/webhooks.js";

// [route, nav label or null (not in the menu), page module]
const PAGES = [
  ["live", "Live", live],
  ["events", null, eventPage],
  ["catalog", "Catalog", catalog],
  ["quarantine", "Quarantine", quarantine],
  ["triggers", "Triggers", triggers],
  ["webhooks", "Webhooks", webhooks],
  ["processing", "Processing", processing],
  ["gamification", "Gamification", gamification],
  ["participants", null, gamification],
  ["charts", "Charts", charts],
];

// What each role may do besides reading (headwater.auth): viewers only read.
const CONFIGURE = new Set(["admin", "editor"]);

const $ = (id) => document.getElementById(id);
let cleanup = null;
let context = null;
let shown = 0; // counts the pages shown: a page still loading when another is asked for is dropped

function parseRoute() {
  const [name, ...rest] = location.hash.replace(/^#\/?/, "").split("/");
  const page = PAGES.find(([route]) => route === name) || PAGES[0];
  return { page, arg: rest.length ? decodeURIComponent(rest.join("/")) : null };
}

async function show() {
  if (!context) return;
  if (cleanup) cleanup();
  cleanup = null;
  const { page, arg } = parseRoute();
  const [route, , module] = page;
  for (const link of $("nav").querySelectorAll("a")) {
    const current = link.dataset.route === route || (route === "events" && link.dataset.route === "live") ||
      (route === "participants" && link.dataset.route === "gamification");
    link.classList.toggle("current", current);
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const turn = freshMain();
  const main = $("main");
  main.dataset.page = route;
  let stop = null;
  try {
    stop = (await module.render(main, context, arg, route)) || null;
  } catch (error) {
    if (turn === shown) failed(main, error);
    return;
  }
  // Left while it loaded: it wrote into a main no longer in the document, and stops now.
  if (turn === shown) cleanup = stop;
  else if (stop) stop();
}

/** A new, empty <main> for the next page; the number of its turn. A page still loading keeps
 * the old one, out of the document, so what it writes when its requests come back shows nowhere. */
function freshMain() {
  $("main").replaceWith(h("main", { id: "main" }));
  shown += 1;
  return shown;
}

/** A page that could not load: say why; a key that stopped working signs out. */
export function failed(main, error) {
  if (error && error.status === 401) {
    signOut("The key was refused (revoked or unknown): sign in again.");
    return;
  }
  main.append(h("p", { class: "notice error", role: "alert" }, problem(error)));
}

function buildNav() {
  fill(
    $("nav"),
    PAGES.filter(([, label]) => label).map(([route, label]) => h("a", { href: `#/${route}`, dataset: { route } }, label)),
  );
}

async function signIn(key) {
  keepKey(key);
  let me;
  try {
    me = await api("/v1/me");
  } catch (error) {
    forgetKey();
    throw error;
  }
  context = { me, canConfigure: CONFIGURE.has(me.role) };
  fill($("who-tenant"), "tenant ", h("strong", {}, me.tenant));
  fill($("who-mode"), "mode ", h("strong", {}, me.mode));
  fill($("who-role"), "role ", h("strong", {}, me.role));
  $("who-mode").classList.toggle("test", me.mode === "test");
  $("sign-in").hidden = true;
  $("nav").hidden = false;
  $("who").hidden = false;
  buildNav();
  await show();
}

function signOut(message = "") {
  if (cleanup) cleanup();
  cleanup = null;
  context = null;
  forgetKey();
  freshMain();
  $("nav").hidden = true;
  $("who").hidden = true;
  $("sign-in").hidden = false;
  $("key").value = "";
  fill($("sign-in-error"), message);
  $("key").focus();
}

function start() {
  $("sign-in-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = $("key").value.trim();
    $("key").value = "";
    fill($("sign-in-error"));
    try {
      await signIn(key);
    } catch (error) {
      fill($("sign-in-error"), error.status === 401 ? "That key was refused: check it and try again." : problem(error));
    }
  });
  $("sign-out").addEventListener("click", () => signOut());
  window.addEventListener("hashchange", show);
  const key = storedKey();
  if (key) signIn(key).catch((error) => signOut(problem(error)));
  else signOut();
}

start();

// trainleak review page: plain JavaScript, no library, no network beyond this server.
// Every string from a report is set as text (textContent), never parsed as HTML.
"use strict";

const VERDICT_KEYS = { y: "leak", n: "not a leak", u: "unsure" };
const FILTERS = ["undecided", "all", "leak", "not a leak", "unsure"];
const UNDO_KEY = "trainleak-review-undo";
const POLL_MS = 4000;

const S = {
  candidates: [],
  byId: new Map(),
  decisions: {},
  reports: [],
  current: null,
  revealed: new Set(),
  pending: 0,
  // Counts decisions and undos sent from this page. A state poll answered after one of them
  // was sent may describe the server before it: such an answer is dropped, not drawn.
  sent: 0,
  reviewer: "",
};

function busy(delta) {
  S.pending += delta;
  if (delta > 0) S.sent++;
  document.body.dataset.busy = String(S.pending);
}

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c) node.append(c);
  return node;
}

function fmt(x, digits = 4) {
  return typeof x === "number" ? x.toFixed(digits) : "n/a";
}

function status(text, error = false) {
  const box = $("status");
  box.textContent = text;
  box.className = "show" + (error ? " error" : "");
  clearTimeout(status.timer);
  status.timer = setTimeout(() => { box.className = error ? "error" : ""; }, error ? 6000 : 1500);
}

async function api(path, body) {
  const init = body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  };
  const res = await fetch(path, init);
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(data.error || `${res.status} ${res.statusText}`);
  return data;
}

// --- filters and order ---------------------------------------------------------------------

function decisionOf(id) {
  const d = S.decisions[id];
  return d ? d.decision : null;
}

function passes(c) {
  const f = $("filter").value;
  const d = decisionOf(c.id);
  if (f === "undecided" && d) return false;
  if (f !== "undecided" && f !== "all" && d !== f) return false;
  const lo = parseFloat($("min").value), hi = parseFloat($("max").value);
  if (!Number.isNaN(lo) && !(c.score >= lo)) return false;
  if (!Number.isNaN(hi) && !(c.score <= hi)) return false;
  return true;
}

function visible() {
  // The current candidate stays listed after it is decided, so that arrows move from it.
  return S.candidates.filter((c) => passes(c) || c.id === S.current);
}

function nextUndecided(fromId) {
  const all = S.candidates;
  const start = Math.max(0, all.findIndex((c) => c.id === fromId));
  for (let k = 1; k <= all.length; k++) {
    const c = all[(start + k) % all.length];
    if (!decisionOf(c.id) && passesScore(c)) return c.id;
  }
  return null;
}

function passesScore(c) {
  const lo = parseFloat($("min").value), hi = parseFloat($("max").value);
  return (Number.isNaN(lo) || c.score >= lo) && (Number.isNaN(hi) || c.score <= hi);
}

// --- drawing -------------------------------------------------------------------------------

function drawProgress() {
  const total = S.candidates.length;
  const decided = S.candidates.filter((c) => decisionOf(c.id)).length;
  $("progress").textContent = `${decided} of ${total} decided`;
  $("progress-bar").max = Math.max(total, 1);
  $("progress-bar").value = decided;
}

function shortName(path) {
  // The end of a path tells candidates apart; its shared start does not.
  const parts = String(path).split("/").filter(Boolean);
  return parts.length > 2 ? "…/" + parts.slice(-2).join("/") : String(path);
}

function drawList() {
  const list = $("list");
  list.replaceChildren();
  for (const c of visible()) {
    const li = el("li", { "data-id": c.id, "data-decision": decisionOf(c.id) || "", title: c.ref },
      el("span", { class: "dot" }),
      el("span", { class: "name", text: shortName(c.ref) }),
      el("span", { class: "score", text: fmt(c.score, 3) }));
    if (c.id === S.current) li.classList.add("current");
    li.addEventListener("click", () => select(c.id));
    list.append(li);
  }
  const cur = list.querySelector("li.current");
  if (cur) cur.scrollIntoView({ block: "nearest" });
}

function shot(c, item, index) {
  const fig = el("figure", { class: "shot" });
  const report = S.reports[c.report];
  const hidden = c.redacted && !S.revealed.has(c.id);
  if (hidden) {
    const b = el("button", { class: "reveal", type: "button", text: "redacted report: click (or press i) to show" });
    b.addEventListener("click", () => reveal(c.id));
    fig.append(b);
  } else {
    const img = el("img", { src: item.url, alt: `${item.caption}: ${item.path}`, "data-index": index });
    img.addEventListener("error", () => img.replaceWith(el("div", { class: "missing", text: "image not found or not readable" })));
    fig.append(img);
  }
  fig.append(el("figcaption", { text: `${item.caption} · ${item.path}` }));
  fig.dataset.report = report ? report.folder : "";
  return fig;
}

function drawCard() {
  const c = S.byId.get(S.current);
  $("empty").hidden = Boolean(c);
  $("candidate").hidden = !c;
  if (!c) return;
  $("question").textContent = c.question;
  $("left-title").textContent = c.kind === "dedup" ? "duplicate" : c.kind === "membership" ? "closest generated samples" : "synthetic / generated";
  $("right-title").textContent = c.kind === "dedup" ? "kept image" : c.kind === "membership" ? `person: ${c.identity}` : "training";
  $("left").replaceChildren(...c.left.map((item, i) => shot(c, item, i)));
  const right = c.right.map((item, i) => shot(c, item, i));
  if (!right.length) right.push(el("div", { class: "missing", text: c.kind === "membership" ? "the person's photos are not in the report" : "no training match" }));
  $("right").replaceChildren(...right);
  $("evidence").hidden = !c.evidence;
  $("evidence-image").replaceChildren(...(c.evidence ? [shot(c, c.evidence, 0)] : []));
  const facts = [[c.score_name, fmt(c.score)], ["threshold", fmt(c.threshold)]];
  if (c.identity) facts.push(["identity", c.identity]);
  facts.push(...c.facts);
  facts.push(["report", c.flagged ? "flagged" : "not flagged"]);
  facts.push(["candidate", c.id]);
  $("facts").replaceChildren(...facts.map(([k, v]) => {
    const dd = el("dd", { text: v });
    if (v === "flagged") dd.className = "flag";
    return el("div", {}, el("dt", { text: k }), dd);
  }));
  const d = S.decisions[c.id];
  const now = $("current");
  now.replaceChildren();
  if (d) {
    now.append(el("span", { class: "badge " + d.decision.replace(/ /g, "-"), text: d.decision }),
      ` by ${d.reviewer} at ${d.decided_at}` + (d.note ? ` — ${d.note}` : ""));
  } else {
    now.textContent = "undecided";
  }
  $("card").dataset.id = c.id;
  $("card").dataset.decision = d ? d.decision : "";
}

function draw() {
  drawProgress();
  drawCard();
  drawList();
}

function select(id) {
  if (!S.byId.has(id)) return;
  S.current = id;
  history.replaceState(null, "", "#" + id);
  draw();
}

function move(step) {
  const list = visible();
  if (!list.length) return;
  const at = list.findIndex((c) => c.id === S.current);
  const next = list[Math.min(list.length - 1, Math.max(0, at + step))];
  select(next.id);
}

function reveal(id) {
  S.revealed.add(id);
  drawCard();
}

// --- decisions -----------------------------------------------------------------------------

function undoStack() {
  try { return JSON.parse(sessionStorage.getItem(UNDO_KEY) || "[]"); } catch (e) { return []; }
}

function saveUndoStack(stack) {
  sessionStorage.setItem(UNDO_KEY, JSON.stringify(stack.slice(-200)));
}

async function decide(decision) {
  const c = S.byId.get(S.current);
  if (!c) return;
  const before = S.decisions[c.id];
  const note = $("note").value;
  S.decisions[c.id] = { decision, reviewer: S.reviewer, decided_at: "saving…", note };
  $("note").value = "";
  const next = nextUndecided(c.id);
  if (next) select(next); else draw();
  busy(1);
  try {
    // The server signs the decision with the reviewer whose token this page holds.
    const res = await api("/api/decide", { id: c.id, decision, note });
    S.decisions[c.id] = res.decision;
    const stack = undoStack();
    stack.push({ id: c.id, row: res.row });
    saveUndoStack(stack);
    status(`saved: ${decision}`);
  } catch (err) {
    S.decisions[c.id] = before;
    status(`not saved: ${err.message}`, true);
  } finally {
    busy(-1);
    draw();
  }
}

async function undo() {
  const stack = undoStack();
  const last = stack.pop();
  if (!last) { status("nothing to undo"); return; }
  busy(1);
  try {
    const res = await api("/api/undo", { id: last.id, row: last.row });
    S.decisions[last.id] = res.decision;
    saveUndoStack(stack);
    select(last.id);
    status("undone");
  } catch (err) {
    status(`undo failed: ${err.message}`, true);
  } finally {
    busy(-1);
    draw();
  }
}

async function poll() {
  if (S.pending || document.hidden) return;
  const sentBefore = S.sent;
  try {
    const res = await api("/api/state");
    // A decision sent after this poll left may have been answered before this poll was:
    // checking only S.pending here would put the older state back over it.
    if (S.pending || S.sent !== sentBefore) return;
    S.decisions = res.decisions;
    drawProgress();
    drawList();
    if (S.current) drawCard();
  } catch (err) { /* the server may be restarting; the next poll tries again */ }
}

// --- keys ----------------------------------------------------------------------------------

function onKey(ev) {
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const inField = ev.target instanceof HTMLInputElement || ev.target instanceof HTMLSelectElement;
  if (ev.key === "Escape") { $("help").hidden = true; if (inField) ev.target.blur(); return; }
  if (inField) {
    if (ev.key === "Enter") { ev.preventDefault(); ev.target.blur(); }
    return;
  }
  if (!$("help").hidden && ev.key !== "?") { $("help").hidden = true; }
  const k = ev.key;
  if (VERDICT_KEYS[k]) decide(VERDICT_KEYS[k]);
  else if (k === "ArrowRight") move(1);
  else if (k === "ArrowLeft") move(-1);
  else if (k === "z") undo();
  else if (k === "?") $("help").hidden = !$("help").hidden;
  else if (k === "i" && S.current) reveal(S.current);
  else if (k === "e") $("note").focus();
  else if (k === "f") {
    const f = $("filter");
    f.value = FILTERS[(FILTERS.indexOf(f.value) + 1) % FILTERS.length];
    draw();
  } else return;
  ev.preventDefault();
}

// --- start ---------------------------------------------------------------------------------

async function start() {
  const data = await api("/api/candidates");
  S.candidates = data.candidates;
  S.byId = new Map(S.candidates.map((c) => [c.id, c]));
  S.decisions = data.decisions;
  S.reports = data.reports;
  S.reviewer = data.reviewer;
  $("reviewer").textContent = S.reviewer;
  $("reports").replaceChildren(...data.reports.map((r) => el("div", {},
    el("a", { href: `/report/${r.number}`, text: `report ${r.number}` }),
    ` ${r.command} · ${r.folder} · ${r.encoder} · ${r.candidates} candidates` + (r.redacted ? " · redacted" : ""))));
  const wanted = decodeURIComponent(location.hash.slice(1));
  const first = S.byId.has(wanted) ? wanted : (nextUndecided(S.candidates.length ? S.candidates[S.candidates.length - 1].id : null) || (S.candidates[0] || {}).id);
  S.current = first || null;
  if (S.current) select(S.current); else draw();
  document.body.dataset.busy = "0";
  document.body.dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", () => {
  document.addEventListener("keydown", onKey);
  for (const b of document.querySelectorAll("[data-decision]")) {
    if (b.tagName === "BUTTON") b.addEventListener("click", () => decide(b.dataset.decision));
  }
  $("prev").addEventListener("click", () => move(-1));
  $("next").addEventListener("click", () => move(1));
  $("undo").addEventListener("click", undo);
  $("help-button").addEventListener("click", () => { $("help").hidden = !$("help").hidden; });
  $("help").addEventListener("click", (ev) => { if (ev.target === $("help")) $("help").hidden = true; });
  for (const id of ["filter", "min", "max"]) $(id).addEventListener("input", draw);
  $("filters").addEventListener("submit", (ev) => ev.preventDefault());
  window.addEventListener("hashchange", () => select(decodeURIComponent(location.hash.slice(1))));
  start().catch((err) => status(`could not load the candidates: ${err.message}`, true));
  setInterval(poll, POLL_MS);
});

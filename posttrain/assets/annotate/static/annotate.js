// The annotator page: show a task, collect A / B / tie + confidence or a ranking (+ optional
// Likert ratings), submit with a vote key that stays the same across retries, move on; go back to
// earlier answers and revise them.
"use strict";

const CONFIDENCE = { 1: "slightly", 2: "better", 3: "much better" };

const state = {
  aspects: {},
  name: "",
  task: null, // the task view from /api/next or /api/tasks/ID
  voteKey: null, // made once per shown task: a retry or a double click re-sends the same key
  shownAt: 0,
  choice: null,
  confidence: null,
  busy: false, // a vote (or skip) is being saved: the choice on screen is frozen
  revising: false, // the shown task is an earlier answer
  recent: [], // answered assignment ids, latest first (from /api/recent)
  recentIndex: -1, // which of them is shown while revising
  raw: false, // responses as raw text instead of formatted Markdown
};

const $ = (id) => document.getElementById(id);

function setStatus(text, kind) {
  const status = $("status");
  status.textContent = text;
  status.className = kind || "";
}

let toastTimer = null;
function toast(text) {
  const box = $("toast");
  box.textContent = text;
  box.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { box.hidden = true; }, 2500);
}

function showProgress(progress) {
  if (!progress) return;
  const bar = $("progress-bar");
  bar.max = Math.max(progress.total, 1);
  bar.value = progress.done;
  let text = `${progress.done} / ${progress.total} done`;
  if (progress.skipped) text += ` · ${progress.skipped} skipped`;
  $("progress-text").textContent = text;
}

// ---------------------------------------------------------------------------------------------
// rendering

function renderPrompt(prompt) {
  const box = $("prompt");
  box.replaceChildren();
  if (typeof prompt === "string") {
    box.textContent = prompt;
    return;
  }
  for (const message of prompt) {
    box.append(
      el("div", { class: "message" },
        el("span", { class: "role" }, message.role),
        el("div", { class: "message-text" }, message.content)),
    );
  }
}

// Formatted responses: the server renders the Markdown with the guidelines' renderer (raw HTML is
// not passed through). The page parses that HTML into an inert document (DOMParser: nothing runs,
// nothing loads) and copies over only an allow-list of elements and attributes, so even a faulty
// renderer cannot put a script, an event handler, an image or a javascript: link on the page.
const ALLOWED_TAGS = new Set([
  "P", "BR", "HR", "H1", "H2", "H3", "H4", "H5", "H6", "STRONG", "EM", "B", "I", "S", "DEL", "CODE",
  "PRE", "UL", "OL", "LI", "BLOCKQUOTE", "A", "TABLE", "THEAD", "TBODY", "TR", "TH", "TD", "SUP", "SUB",
]);
const DROPPED_TAGS = new Set(["SCRIPT", "STYLE", "TEMPLATE", "IFRAME", "OBJECT", "EMBED", "NOSCRIPT"]);

function safeHref(href) {
  const value = (href || "").trim();
  return /^(https?:|mailto:)/i.test(value) ? value : null;
}

function copySafe(node, into) {
  for (const child of node.childNodes) {
    if (child.nodeType === Node.TEXT_NODE) {
      into.append(document.createTextNode(child.nodeValue));
    } else if (child.nodeType === Node.ELEMENT_NODE) {
      const tag = child.tagName;
      if (DROPPED_TAGS.has(tag)) continue;
      if (!ALLOWED_TAGS.has(tag)) {
        copySafe(child, into); // unknown element: keep its text only
        continue;
      }
      const copy = document.createElement(tag.toLowerCase());
      if (tag === "A") {
        const href = safeHref(child.getAttribute("href"));
        if (href) {
          copy.setAttribute("href", href);
          copy.setAttribute("rel", "noopener noreferrer nofollow");
          copy.setAttribute("target", "_blank");
        }
      } else if (tag === "CODE") {
        const cls = child.getAttribute("class") || "";
        if (/^language-[\w+-]+$/.test(cls)) copy.setAttribute("class", cls);
      } else if (tag === "OL" && /^\d+$/.test(child.getAttribute("start") || "")) {
        copy.setAttribute("start", child.getAttribute("start"));
      }
      copySafe(child, copy);
      into.append(copy);
    }
  }
}

function formatted(html) {
  const box = el("div", { class: "md response-md" });
  const doc = new DOMParser().parseFromString(`<body>${html}</body>`, "text/html");
  copySafe(doc.body, box);
  return box;
}

function ratingSelect(letter, aspect, top) {
  const select = el("select", { "data-letter": letter, "data-aspect": aspect, id: `rate-${letter}-${aspect}` });
  select.append(el("option", { value: "" }, "–"));
  for (let score = 1; score <= top; score++) select.append(el("option", { value: score }, score));
  return el("label", { class: "rating" }, `${aspect} `, select);
}

function renderResponses(responses) {
  const box = $("responses");
  box.replaceChildren();
  box.style.setProperty("--columns", String(Math.min(responses.length, 3)));
  for (const response of responses) {
    const ratings = el("div", { class: "ratings" });
    for (const [aspect, top] of Object.entries(state.aspects)) {
      ratings.append(ratingSelect(response.letter, aspect, top));
    }
    const toggle = el("button", { type: "button", class: "link raw-toggle" }, "raw");
    const card = el("article", { class: "response", id: `response-${response.letter}`, "data-letter": response.letter },
      el("header", {}, el("span", { class: "letter" }, response.letter), ` Response ${response.letter}`, toggle),
      formatted(response.html === undefined ? "" : response.html),
      el("pre", { class: "response-raw" }, response.text),
      ratings);
    if (response.html === undefined) card.classList.add("raw");
    toggle.addEventListener("click", () => setRaw(card, !card.classList.contains("raw")));
    box.append(card);
  }
  for (const card of box.children) setRaw(card, state.raw);
}

function setRaw(card, raw) {
  card.classList.toggle("raw", raw);
  card.querySelector(".raw-toggle").textContent = raw ? "formatted" : "raw";
}

function toggleAllRaw() {
  state.raw = !state.raw;
  for (const card of $("responses").children) setRaw(card, state.raw);
}

// ---------------------------------------------------------------------------------------------
// rankings: the text box is the source of truth; keys, clicks and drags rewrite it

// "cadb", "C A D B", "C > A = D > B" -> {tiers: [["C"], ["A", "D"], ["B"]], trailing: "" | ">" | "="}
// Two letters without ">" or "=" between them are in that order.
function parseRanking(text) {
  const tokens = [];
  let bad = null;
  for (const ch of text.toUpperCase().replace(/,/g, " ")) {
    if (/\s/.test(ch)) continue;
    if (ch === ">" || ch === "=") {
      if (tokens.length && /[A-Z]/.test(tokens[tokens.length - 1])) tokens.push(ch);
      else if (tokens.length) tokens[tokens.length - 1] = ch;
    } else if (/[A-Z]/.test(ch)) {
      if (tokens.length && /[A-Z]/.test(tokens[tokens.length - 1])) tokens.push(">");
      tokens.push(ch);
    } else if (bad === null) {
      bad = ch;
    }
  }
  const tiers = [];
  let trailing = "";
  for (let i = 0; i < tokens.length; i++) {
    const token = tokens[i];
    if (token === ">" || token === "=") {
      trailing = token;
      continue;
    }
    if (trailing === "=" && tiers.length) tiers[tiers.length - 1].push(token);
    else tiers.push([token]);
    trailing = "";
  }
  return { tiers, trailing, bad };
}

function spellRanking(tiers, trailing = "") {
  const text = tiers.map((tier) => tier.join(" = ")).join(" > ");
  return trailing && text ? `${text} ${trailing}` : text;
}

function responseLetters() {
  return state.task ? state.task.responses.map((r) => r.letter) : [];
}

// What is wrong with the ranking typed so far ("" when it can be sent).
function rankingProblems(parsed) {
  const all = responseLetters();
  const named = parsed.tiers.flat();
  if (parsed.bad !== null) return [`"${parsed.bad}" is not a letter, > or =`, []];
  const unknown = named.filter((letter) => !all.includes(letter));
  if (unknown.length) return [`there is no response ${unknown.join(", ")}`, []];
  const twice = named.filter((letter, i) => named.indexOf(letter) !== i);
  if (twice.length) return [`${[...new Set(twice)].join(", ")} appears twice`, []];
  const missing = all.filter((letter) => !named.includes(letter));
  return [missing.length ? `missing: ${missing.join(", ")}` : "", missing];
}

function setRanking(tiers, trailing = "") {
  $("ranking").value = spellRanking(tiers, trailing);
  refreshRanking();
}

function refreshRanking() {
  const parsed = parseRanking($("ranking").value);
  const [problem] = rankingProblems(parsed);
  $("rank-missing").textContent = problem ? problem.charAt(0).toUpperCase() + problem.slice(1) : "";
  const used = parsed.tiers.flat();
  for (const button of document.querySelectorAll(".rank-letter")) {
    button.classList.toggle("used", used.includes(button.dataset.letter));
  }
  const list = $("rank-list");
  list.replaceChildren();
  parsed.tiers.forEach((tier, depth) => {
    if (depth > 0) list.append(el("li", { class: "rank-sep", "aria-hidden": "true" }, ">"));
    tier.forEach((letter, k) => {
      if (k > 0) list.append(el("li", { class: "rank-sep", "aria-hidden": "true" }, "="));
      const chip = el("li", { class: "rank-chip", draggable: "true", "data-letter": letter }, letter);
      chip.addEventListener("dragstart", (event) => {
        event.dataTransfer.setData("text/plain", letter);
        event.dataTransfer.effectAllowed = "move";
      });
      chip.addEventListener("pointerdown", (event) => startTouchDrag(event, letter, chip));
      chip.addEventListener("dragover", (event) => event.preventDefault());
      chip.addEventListener("drop", (event) => {
        event.preventDefault();
        moveBefore(event.dataTransfer.getData("text/plain"), letter);
      });
      list.append(chip);
    });
  });
  const end = el("li", { class: "rank-end" }, parsed.tiers.length ? "drop here for last" : "nothing ranked yet");
  end.addEventListener("dragover", (event) => event.preventDefault());
  end.addEventListener("drop", (event) => {
    event.preventDefault();
    moveBefore(event.dataTransfer.getData("text/plain"), null);
  });
  list.append(end);
}

// Touch screens have no HTML5 drag and drop: a finger on a ranked chip, lifted over another chip
// (or the "last" box), moves it there too.
let touchDrag = null;

function startTouchDrag(event, letter, chip) {
  if (event.pointerType !== "touch" || state.busy) return;
  event.preventDefault();
  touchDrag = { letter, chip };
  chip.classList.add("dragging");
}

function endTouchDrag(event) {
  if (!touchDrag) return;
  const { letter, chip } = touchDrag;
  touchDrag = null;
  chip.classList.remove("dragging");
  if (event.type !== "pointerup") return;
  const under = document.elementFromPoint(event.clientX, event.clientY);
  const target = under && under.closest(".rank-chip, .rank-end");
  if (target) moveBefore(letter, target.classList.contains("rank-end") ? null : target.dataset.letter);
}

// Drag and drop: put `letter` in its own place just before `target` (or last when target is null).
function moveBefore(letter, target) {
  if (state.busy || !letter || letter === target || !responseLetters().includes(letter)) return;
  const { tiers } = parseRanking($("ranking").value);
  const rest = tiers.map((tier) => tier.filter((l) => l !== letter)).filter((tier) => tier.length);
  const at = target === null ? rest.length : rest.findIndex((tier) => tier.includes(target));
  rest.splice(at < 0 ? rest.length : at, 0, [letter]);
  setRanking(rest);
}

function addToRanking(letter, tie) {
  if (state.busy || !responseLetters().includes(letter)) return;
  const { tiers, trailing } = parseRanking($("ranking").value);
  if (tiers.flat().includes(letter)) {
    setStatus(`${letter} is already ranked (Backspace undoes).`, "warn");
    return;
  }
  if ((tie || trailing === "=") && tiers.length) tiers[tiers.length - 1].push(letter);
  else tiers.push([letter]);
  setRanking(tiers);
}

function tieNext() {
  if (state.busy) return;
  const { tiers } = parseRanking($("ranking").value);
  if (tiers.length) setRanking(tiers, "=");
}

function undoRanking() {
  if (state.busy) return;
  const { tiers, trailing } = parseRanking($("ranking").value);
  if (trailing === "=") {
    setRanking(tiers);
    return;
  }
  if (!tiers.length) return;
  tiers[tiers.length - 1].pop();
  if (!tiers[tiers.length - 1].length) tiers.pop();
  setRanking(tiers);
}

function renderRankButtons(responses) {
  const holder = $("rank-buttons");
  holder.replaceChildren();
  for (const response of responses) {
    const button = el("button", { type: "button", class: "rank-letter", draggable: "true", "data-letter": response.letter }, response.letter);
    button.addEventListener("click", (event) => addToRanking(response.letter, event.shiftKey));
    button.addEventListener("dragstart", (event) => event.dataTransfer.setData("text/plain", response.letter));
    holder.append(button);
  }
}

// ---------------------------------------------------------------------------------------------
// A / B / tie

function markSelection() {
  for (const button of document.querySelectorAll(".choice-btn")) {
    button.classList.toggle("selected", button.dataset.choice === state.choice);
  }
  for (const button of document.querySelectorAll(".conf-btn")) {
    button.classList.toggle("selected", Number(button.dataset.confidence) === state.confidence);
  }
  for (const card of document.querySelectorAll(".response")) {
    card.classList.toggle("chosen", card.dataset.letter === state.choice);
  }
  setFrozen(state.busy);
}

// While a vote is being saved nothing on screen can change it: the controls are disabled and the
// keys ignored, so what the page shows is what the database gets.
function setFrozen(frozen) {
  document.body.classList.toggle("busy", frozen);
  const pair = state.task && state.task.responses.length === 2;
  for (const button of document.querySelectorAll(".choice-btn")) button.disabled = frozen;
  for (const button of document.querySelectorAll(".conf-btn")) {
    button.disabled = frozen || (pair && state.choice === "tie");
  }
  for (const node of document.querySelectorAll("#rank-controls button, #rank-controls input, #responses select")) {
    node.disabled = frozen;
  }
  for (const chip of document.querySelectorAll(".rank-chip")) chip.draggable = !frozen;
  for (const id of ["submit", "skip", "previous", "back-to-queue"]) $(id).disabled = frozen;
}

function choose(choice) {
  if (state.busy || !state.task || state.task.responses.length !== 2) return;
  state.choice = choice;
  if (choice === "tie") state.confidence = null;
  markSelection();
  setStatus("");
}

function setConfidence(value) {
  if (state.busy || !state.task || state.task.responses.length !== 2 || state.choice === "tie") return;
  state.confidence = value;
  markSelection();
}

// ---------------------------------------------------------------------------------------------
// showing a task

function describe(vote) {
  if (!vote) return "";
  if (vote.choice === "tie") return "tie";
  if (vote.choice) return vote.confidence ? `${vote.choice}, ${CONFIDENCE[vote.confidence]}` : vote.choice;
  if (vote.kind === "choice" || vote.kind === "rank") {
    // a stored vote as /api/tasks returns it
    if (vote.kind === "choice") {
      const choice = { "A > B": "A", "B > A": "B", "A = B": "tie" }[vote.ranking];
      return describe({ choice, confidence: vote.confidence });
    }
    return `ranking ${vote.ranking}`;
  }
  return `ranking ${vote.ranking}`;
}

function showTask(task, { revising = false } = {}) {
  state.task = task;
  state.voteKey = randomKey();
  state.shownAt = Date.now();
  state.choice = null;
  state.confidence = null;
  state.revising = revising;
  if (!revising) state.recentIndex = -1;
  setStatus("");
  $("done").hidden = task !== null;
  $("task").hidden = task === null;
  $("revise-banner").hidden = !revising;
  window.scrollTo(0, 0);
  if (task === null) {
    delete $("task").dataset.assignment;
    return;
  }
  renderPrompt(task.prompt);
  renderResponses(task.responses);
  const pair = task.responses.length === 2;
  $("pair-controls").hidden = !pair;
  $("rank-controls").hidden = pair;
  $("ranking").value = "";
  if (!pair) renderRankButtons(task.responses);
  const vote = task.vote;
  if (vote) { // an earlier answer: show it so it can be changed
    if (pair && vote.kind === "choice") {
      state.choice = { "A > B": "A", "B > A": "B", "A = B": "tie" }[vote.ranking] || null;
      state.confidence = vote.confidence;
    } else {
      $("ranking").value = vote.ranking;
    }
    for (const [letter, scores] of Object.entries(vote.ratings || {})) {
      for (const [aspect, score] of Object.entries(scores)) {
        const select = $(`rate-${letter}-${aspect}`);
        if (select) select.value = String(score);
      }
    }
  }
  if (revising) {
    const place = state.recentIndex + 1;
    $("revise-text").textContent = `Your answer ${place} back: ${describe(vote)}. Change it and press Enter to save the change.`;
  }
  if (!pair) refreshRanking();
  markSelection();
  $("task").dataset.assignment = String(task.assignment_id);
}

async function loadNext() {
  const data = await api("GET", "/api/next", undefined, { retries: 20 });
  showProgress(data.progress);
  showTask(data.task);
}

// ---------------------------------------------------------------------------------------------
// previous answers

async function previous() {
  if (state.busy) return;
  try {
    if (!state.revising || !state.recent.length) {
      state.recent = (await api("GET", "/api/recent", undefined, { retries: 5 })).answers.map((a) => a.assignment_id);
    }
    const index = state.revising ? state.recentIndex + 1 : 0;
    if (index >= state.recent.length) {
      setStatus(state.recent.length ? "That was your first answer." : "No earlier answers yet.", "warn");
      return;
    }
    const task = await api("GET", `/api/tasks/${state.recent[index]}`, undefined, { retries: 5 });
    state.recentIndex = index;
    showTask(task, { revising: true });
  } catch (error) {
    setStatus(error.message, "error");
  }
}

async function backToQueue() {
  if (state.busy || !state.revising) return;
  await loadNext();
}

// ---------------------------------------------------------------------------------------------
// submitting

function collectRatings() {
  const ratings = {};
  for (const select of document.querySelectorAll("#responses select")) {
    if (!select.value) continue;
    const letter = select.dataset.letter;
    ratings[letter] = ratings[letter] || {};
    ratings[letter][select.dataset.aspect] = Number(select.value);
  }
  return ratings;
}

function buildVote() {
  const vote = { vote_key: state.voteKey, ratings: collectRatings(), elapsed_ms: Date.now() - state.shownAt };
  if (state.revising) vote.revise = true;
  if (state.task.responses.length === 2) {
    if (!state.choice) return [null, "Choose A, B or tie first."];
    if (state.choice !== "tie" && !state.confidence) return [null, "Choose a confidence: 1, 2 or 3."];
    vote.choice = state.choice;
    if (state.confidence) vote.confidence = state.confidence;
  } else {
    const parsed = parseRanking($("ranking").value);
    if (!parsed.tiers.length) return [null, "Rank the responses first: type their letters best first, e.g. D C A B."];
    const [problem] = rankingProblems(parsed);
    if (problem) return [null, `Not sent: ${problem}. Rank every response.`];
    vote.ranking = spellRanking(parsed.tiers);
  }
  return [vote, null];
}

async function submit() {
  if (state.busy || !state.task) return;
  const [vote, problem] = buildVote();
  if (problem) {
    setStatus(problem, "warn");
    return;
  }
  const what = describe(vote);
  const revising = state.revising;
  state.busy = true;
  setFrozen(true);
  setStatus(`Saving: ${what}…`);
  try {
    await api("POST", `/api/tasks/${state.task.assignment_id}/vote`, vote, {
      retries: 40,
      onRetry: (n) => setStatus(`Connection problem, retrying (${n}). Saving: ${what}. Your answer is kept; no need to answer again.`, "warn"),
    });
    state.busy = false;
    await loadNext();
    toast(revising ? `Changed to: ${what}.` : `Saved: ${what}.`);
  } catch (error) {
    state.busy = false;
    setFrozen(false);
    if (error.status === 409) {
      await loadNext();
      setStatus("That task was already answered (in another window?); press P to see or change it.", "warn");
    } else {
      setStatus(`Not saved (${what}): ${error.message}`, "error");
    }
  } finally {
    state.busy = false;
    setFrozen(false);
  }
}

async function skip() {
  if (state.busy || !state.task) return;
  if (state.revising) {
    await loadNext();
    return;
  }
  state.busy = true;
  setFrozen(true);
  try {
    await api("POST", `/api/tasks/${state.task.assignment_id}/skip`, undefined, { retries: 20 });
    state.busy = false;
    await loadNext();
    toast("Skipped; it will come back at the end.");
  } catch (error) {
    setStatus(error.message, "error");
  } finally {
    state.busy = false;
    setFrozen(false);
  }
}

// ---------------------------------------------------------------------------------------------
// guidelines, shortcuts, layout

function guidelinesOpen() {
  return !$("guidelines-panel").hidden;
}

function toggleGuidelines(open = !guidelinesOpen()) {
  $("guidelines-panel").hidden = !open;
  document.body.classList.toggle("guidelines-open", open);
}

// The server remembers which version of the guidelines each annotator acknowledged.
async function acknowledge() {
  $("guidelines-ack-box").hidden = true;
  toggleGuidelines(false);
  try {
    await api("POST", "/api/guidelines/read", undefined, { retries: 5 });
  } catch (error) {
    setStatus(`Could not record that you read the guidelines: ${error.message}`, "warn");
  }
}

function toggleShortcuts(open = $("shortcuts").hidden) {
  $("shortcuts").hidden = !open;
}

function togglePrompt() {
  const collapsed = $("prompt-box").classList.toggle("collapsed");
  $("prompt-toggle").textContent = collapsed ? "expand" : "collapse";
  $("prompt-toggle").setAttribute("aria-expanded", String(!collapsed));
}

// The prompt sticks below the header; the header's height changes when it wraps.
function trackHeader() {
  const set = () => document.documentElement.style.setProperty("--bar-h", `${$("bar").offsetHeight}px`);
  set();
  new ResizeObserver(set).observe($("bar"));
}

function onKey(event) {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const target = event.target;
  const typing = target instanceof HTMLInputElement || target instanceof HTMLSelectElement || target instanceof HTMLTextAreaElement;
  if (event.key === "Escape") {
    if (!$("shortcuts").hidden) toggleShortcuts(false);
    else if (typing) target.blur();
    else if (guidelinesOpen() && $("guidelines-ack-box").hidden) toggleGuidelines(false);
    return;
  }
  if (typing) {
    if (target.id === "ranking" && event.key === "Enter") {
      event.preventDefault();
      submit();
    }
    return;
  }
  if (event.key === "?") {
    event.preventDefault();
    toggleShortcuts();
    return;
  }
  if (state.busy) { // the vote being saved is frozen; say so instead of changing anything
    if (event.key !== "Tab") event.preventDefault();
    return;
  }
  const key = event.key.length === 1 ? event.key.toUpperCase() : event.key;
  const ranking = state.task && !$("rank-controls").hidden;
  if (ranking && /^[A-Z]$/.test(key) && responseLetters().includes(key)) {
    event.preventDefault();
    addToRanking(key, false);
    return;
  }
  if (ranking && (key === "=" || key === "Backspace" || key === ">")) {
    event.preventDefault();
    if (key === "=") tieNext();
    else if (key === "Backspace") undoRanking();
    return;
  }
  const actions = {
    A: () => choose("A"),
    B: () => choose("B"),
    T: () => choose("tie"),
    1: () => setConfidence(1),
    2: () => setConfidence(2),
    3: () => setConfidence(3),
    Enter: submit,
    S: skip,
    P: previous,
    N: backToQueue,
    M: toggleAllRaw,
    G: () => toggleGuidelines(),
    R: () => { if (ranking) $("ranking").focus(); },
  };
  if (actions[key]) {
    event.preventDefault();
    actions[key]();
  }
}

async function start() {
  fillLogoutForm("logout-csrf");
  trackHeader();
  for (const button of document.querySelectorAll(".choice-btn")) {
    button.addEventListener("click", () => choose(button.dataset.choice));
  }
  for (const button of document.querySelectorAll(".conf-btn")) {
    button.addEventListener("click", () => setConfidence(Number(button.dataset.confidence)));
  }
  $("submit").addEventListener("click", submit);
  $("skip").addEventListener("click", skip);
  $("previous").addEventListener("click", previous);
  $("back-to-queue").addEventListener("click", backToQueue);
  $("rank-clear").addEventListener("click", () => setRanking([]));
  $("ranking").addEventListener("input", refreshRanking);
  $("guidelines-toggle").addEventListener("click", () => toggleGuidelines());
  $("guidelines-close").addEventListener("click", () => toggleGuidelines(false));
  $("guidelines-ack").addEventListener("click", acknowledge);
  $("shortcuts-toggle").addEventListener("click", () => toggleShortcuts());
  $("shortcuts-close").addEventListener("click", () => toggleShortcuts(false));
  $("shortcuts").addEventListener("click", (event) => { if (event.target === $("shortcuts")) toggleShortcuts(false); });
  $("prompt-toggle").addEventListener("click", togglePrompt);
  document.addEventListener("keydown", onKey);
  document.addEventListener("pointerup", endTouchDrag);
  document.addEventListener("pointercancel", endTouchDrag);
  // The browser's Back button means "previous answer" here (it used to lead to the login form).
  history.pushState({ annotate: true }, "");
  window.addEventListener("popstate", () => {
    history.pushState({ annotate: true }, "");
    previous();
  });

  const guidelines = await api("GET", "/api/guidelines", undefined, { retries: 5 });
  state.aspects = guidelines.aspects;
  // Guidelines are the admin's Markdown rendered server-side with raw HTML escaped.
  $("guidelines").innerHTML = guidelines.html;
  const me = await api("GET", "/api/me", undefined, { retries: 5 });
  state.name = me.name;
  $("who").textContent = me.name;
  if (!me.guidelines_read) { // first login (or new guidelines): open them until acknowledged
    $("guidelines-ack-box").hidden = false;
    toggleGuidelines(true);
  }
  await loadNext();
  document.body.dataset.ready = "1";
}

start().catch((error) => setStatus(error.message, "error"));

// The admin dashboard: progress, gold agreement, inter-annotator agreement, annotator habits and
// the most disagreed tasks, accounts, export. Everything is written with el() (textContent).
"use strict";

const $ = (id) => document.getElementById(id);

function fmt(value, digits = 2) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

function pct(value) {
  return value === null || value === undefined ? "–" : `${Math.round(value * 100)}%`;
}

function card(label, value) {
  return el("div", { class: "card" }, el("div", { class: "card-value" }, value), el("div", { class: "muted" }, label));
}

function render(data) {
  const agreement = data.agreement;
  $("cards").replaceChildren(
    card("tasks", data.tasks),
    card("gold tasks", data.gold_tasks),
    card("votes", data.votes),
    card("Fleiss' κ", fmt(agreement.fleiss_kappa)),
    card("overlapping items", agreement.items),
  );
  const rows = data.annotators.map((a) => {
    const bar = el("progress", { max: Math.max(a.assigned, 1), value: a.done });
    const gold = el("td", { class: a.below_threshold ? "flag" : "" }, pct(a.gold_agreement));
    return el("tr", { "data-name": a.name },
      el("td", {}, a.name), el("td", {}, a.done), el("td", {}, a.assigned), el("td", {}, a.skipped),
      el("td", {}, bar), el("td", {}, a.gold_items), gold);
  });
  $("annotators").tBodies[0].replaceChildren(...rows);
  $("threshold-note").textContent =
    `Gold agreement below ${pct(data.gold_threshold)} is flagged: review the guidelines with that annotator.`;
  $("agreement-summary").textContent = agreement.items
    ? `${agreement.items} overlapping comparisons; observed agreement ${pct(agreement.observed_agreement)}, Fleiss' κ ${fmt(agreement.fleiss_kappa)}.`
    : "No overlapping items yet: assign tasks to 2 or more annotators each.";
  $("pairs").tBodies[0].replaceChildren(...agreement.pairs.map((p) =>
    el("tr", {}, el("td", {}, p.a), el("td", {}, p.b), el("td", {}, p.items),
      el("td", {}, pct(p.observed_agreement)), el("td", {}, fmt(p.cohen_kappa)))));
}

function seconds(ms) {
  if (ms === null || ms === undefined) return "–";
  return ms < 60000 ? `${(ms / 1000).toFixed(1)} s` : `${(ms / 60000).toFixed(1)} min`;
}

function renderQuality(data) {
  $("habits").tBodies[0].replaceChildren(...data.annotators.map((a) => {
    const biased = a.position_a_rate !== null && Math.abs(a.position_a_rate - 0.5) > 0.25;
    return el("tr", { "data-name": a.name },
      el("td", {}, a.name), el("td", {}, a.votes),
      el("td", { class: biased ? "flag" : "" }, pct(a.position_a_rate)),
      el("td", {}, pct(a.tie_rate)),
      el("td", {}, `${a.confidence[1]} / ${a.confidence[2]} / ${a.confidence[3]}`),
      el("td", {}, seconds(a.median_ms)), el("td", {}, a.revised));
  }));
  $("disagreed").tBodies[0].replaceChildren(...data.disagreed.map((t) => {
    const votes = el("td", { class: "vote-list" });
    for (const v of t.votes) {
      const strength = v.confidence ? ` (${v.confidence})` : "";
      votes.append(el("div", {}, `${v.annotator}: ${v.ranking}${strength}`));
    }
    const label = t.gold ? `${t.task_id} (gold ${t.gold})` : t.task_id;
    return el("tr", {}, el("td", {}, label), el("td", { class: "prompt-cell" }, t.prompt),
      el("td", {}, pct(t.disagreement)), votes);
  }));
  $("disagreed-note").textContent = data.disagreed.length
    ? "Disagreement: for each pair of responses, the share of votes that differ from the most common answer, averaged over the pairs. Confidence in brackets."
    : "No task with two or more differing votes yet.";
}

async function refresh() {
  render(await api("GET", "/api/admin/summary", undefined, { retries: 5 }));
  renderQuality(await api("GET", "/api/admin/quality", undefined, { retries: 5 }));
  document.body.dataset.ready = "1";
}

async function addAnnotator(event) {
  event.preventDefault();
  const name = $("new-name").value.trim();
  try {
    const made = await api("POST", "/api/admin/annotators", { name });
    $("new-token").replaceChildren(
      `Token for ${made.name} (shown once, send it privately): `,
      el("code", { id: "token-value" }, made.token));
    $("new-name").value = "";
    await refresh();
  } catch (error) {
    $("new-token").textContent = error.message;
  }
}

async function assign(event) {
  event.preventDefault();
  try {
    const result = await api("POST", "/api/admin/assign", { overlap: Number($("overlap").value) });
    let text = `${result.assigned} new assignments`;
    if (result.assigned === 0) text += ": every task already has its annotators.";
    else if (result.regular === 0) text += `, all of them gold (screening) tasks: no new tasks to label were handed out. Load more tasks or raise "annotators per task".`;
    else text += ` (${result.regular} tasks to label, ${result.gold} gold).`;
    $("assign-result").textContent = text;
    $("assign-result").className = result.assigned && result.regular === 0 ? "note-warn" : "muted";
    await refresh();
  } catch (error) {
    $("assign-result").textContent = error.message;
  }
}

fillLogoutForm("logout-csrf");
$("refresh").addEventListener("click", refresh);
$("add-form").addEventListener("submit", addAnnotator);
$("assign-form").addEventListener("submit", assign);
refresh();

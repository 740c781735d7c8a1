// The llmos labeling page: a prompt, K answers sampled from the served model (through the
// OpenAI API, n = K) and from any other models the server was given (--label-endpoints,
// through its /api/label/sample proxy), and a person who picks the best, optionally ranks the
// rest, marks a tie or "all bad", and may edit an answer into the ideal one (the model drafts,
// the person fixes). Labels go to the server's SQLite store; export turns them into TRL
// comparisons.
"use strict";

const state = {
  prompt: null, answers: [], models: [], ranking: [], edited: {}, verdict: null, done: [],
  sources: [],  // [{id, model}]: 0 is the served model, then the endpoints that answered
};

function status(text, ok = false) {
  $("status").textContent = text || "";
  $("status").className = ok ? "ok" : "";
}

async function progress() {
  const s = await api("GET", "/api/labels/stats");
  $("progress").textContent = `${s.labels} labelled · ${s.comparisons} comparisons · ${s.queue_left} left in the queue`;
}

// -- the prompt and its answers --------------------------------------------------------------

function currentPrompt() {
  // A prompt from the queue keeps its messages; a typed one is a single user message.
  const text = $("prompt").value.trim();
  if (state.prompt && state.prompt.at(-1).content === text) return state.prompt;
  return text ? [{ role: "user", content: text }] : null;
}

async function next() {
  const r = await api("GET", "/api/label/next");
  if (!r.prompt) { status("the queue is empty: type a prompt"); return; }
  state.prompt = r.prompt;
  $("prompt").value = r.prompt.at(-1).content;
  await sample();
}

async function sample() {
  const prompt = currentPrompt();
  if (!prompt) { status("type a prompt or take the next from the queue"); return; }
  state.prompt = prompt;
  status("sampling…");
  // K answers shared out over the models (the first ones get one more when K does not split),
  // asked in parallel, then shuffled: a model's answers never sit in the same places.
  const k = Number($("k").value), temperature = Number($("temperature").value);
  const S = state.sources.length;
  const asks = state.sources.map((src, i) => {
    const n = Math.floor(k / S) + (i < k % S ? 1 : 0);
    if (!n) return Promise.resolve([]);
    const tag = (texts) => texts.map((text) => ({ text, model: src.model }));
    if (src.id === 0) {
      return api("POST", "/v1/chat/completions", {
        model: src.model, messages: prompt, n, temperature, max_tokens: 128,
      }).then((r) => tag(r.choices.map((c) => answerText(c.message))));
    }
    return api("POST", "/api/label/sample", {
      source: src.id, messages: prompt, n, temperature, max_tokens: 128,
    }).then((r) => tag(r.answers));
  });
  const got = (await Promise.all(asks)).flat();
  for (let i = got.length - 1; i > 0; i--) {  // Fisher–Yates
    const j = Math.floor(Math.random() * (i + 1));
    [got[i], got[j]] = [got[j], got[i]];
  }
  state.answers = got.map((a) => a.text);
  state.models = got.map((a) => a.model);
  clearMarks();
  status("");
}

function answerText(m) {
  const calls = (m.tool_calls || []).map((c) => `[tool call: ${c.function.name}(${c.function.arguments})]`);
  return [m.content || "", ...calls].filter(Boolean).join("\n");
}

function clearMarks() {
  state.ranking = []; state.edited = {}; state.verdict = null;
  render();
}

// -- marking ---------------------------------------------------------------------------------

function pick(i) {
  if (i >= state.answers.length) return;
  state.verdict = null;
  const at = state.ranking.indexOf(i);
  if (at >= 0) state.ranking.splice(at); // picking a ranked one again un-ranks it and the rest
  else state.ranking.push(i);
  render();
}

function edit(i) {
  if (i === undefined || i >= state.answers.length) return;
  const card = $("answers").children[i];
  const ta = document.createElement("textarea");
  ta.value = state.edited[i] ?? state.answers[i];
  ta.className = "edit";
  ta.oninput = () => { state.edited[i] = ta.value; card.classList.add("edited"); };
  ta.onclick = (e) => e.stopPropagation();
  card.querySelector(".text").replaceWith(ta);
  ta.focus();
}

function render() {
  const box = $("answers");
  box.replaceChildren();
  state.answers.forEach((text, i) => {
    const card = document.createElement("div");
    card.className = "answer";
    const rank = state.ranking.indexOf(i);
    if (rank === 0) card.classList.add("best");
    else if (rank > 0) card.classList.add("ranked");
    if (state.edited[i] !== undefined) card.classList.add("edited");
    const head = document.createElement("div");
    head.className = "head";
    head.textContent = `${i + 1}` + (rank === 0 ? " · best" : rank > 0 ? ` · #${rank + 1}` : "");
    const who = document.createElement("span");  // blind unless "show models" is ticked
    who.className = "model";
    who.textContent = state.models[i] || "";
    who.hidden = !$("show-models").checked;
    head.appendChild(who);
    const body = document.createElement("div");
    body.className = "text";
    body.textContent = state.edited[i] ?? text;
    const btn = document.createElement("button");
    btn.type = "button"; btn.className = "edit-button"; btn.textContent = "Edit";
    btn.onclick = (e) => { e.stopPropagation(); edit(i); };
    card.append(head, body, btn);
    card.onclick = () => pick(i);
    box.appendChild(card);
  });
  const v = state.verdict === "tie" ? "tie" : state.verdict === "all_bad" ? "all bad" : null;
  $("ranking").textContent = v ? `verdict: ${v}`
    : state.ranking.length ? "ranking: " + state.ranking.map((i) => i + 1).join(" > ") : "";
}

// -- submit, undo, export --------------------------------------------------------------------

async function submit() {
  if (!state.answers.length) return;
  if (!state.ranking.length && !state.verdict) { status("pick the best (1–8), or mark a tie or all bad"); return; }
  const label = {
    prompt: state.prompt, answers: state.answers, models: state.models,
    ranking: state.verdict ? [] : state.ranking,
    verdict: state.verdict || "ranked", labeler: $("labeler").value.trim() || "anonymous",
    edited: Object.entries(state.edited).map(([i, text]) => ({ index: Number(i), text })),
  };
  const r = await api("POST", "/api/labels", label);
  state.done.push({ id: r.id, label });
  state.answers = []; state.models = []; state.prompt = null; $("prompt").value = "";
  clearMarks();
  status("saved", true);
  await progress();
}

async function undo() {
  const last = state.done.pop();
  if (!last) { status("nothing to undo"); return; }
  await api("DELETE", "/api/labels/" + last.id);
  // Back on the page as it was, to label again.
  state.prompt = last.label.prompt; state.answers = last.label.answers; state.models = last.label.models;
  $("prompt").value = state.prompt.at(-1).content;
  state.ranking = last.label.ranking; state.verdict = last.label.verdict === "ranked" ? null : last.label.verdict;
  state.edited = Object.fromEntries(last.label.edited.map((e) => [e.index, e.text]));
  render();
  status("undone", true);
  await progress();
}

async function exportJsonl(e) {
  e.preventDefault();
  const r = await fetch("/api/labels/export", { headers: headers() });
  if (!r.ok) { status("export failed: " + r.statusText); return; }
  const url = URL.createObjectURL(await r.blob());
  const a = document.createElement("a");
  a.href = url; a.download = "comparisons.jsonl";
  document.body.appendChild(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

// -- wiring ----------------------------------------------------------------------------------

function onKey(e) {
  const typing = ["INPUT", "TEXTAREA"].includes(document.activeElement.tagName);
  if (e.key === "Escape") { document.activeElement.blur(); if (!typing) clearMarks(); return; }
  if (typing) return;
  const run = (f) => { e.preventDefault(); f().catch((err) => status(err.message)); };
  if (/^[1-8]$/.test(e.key)) { e.preventDefault(); pick(Number(e.key) - 1); }
  else if (e.key === "e" || e.key === "E") { e.preventDefault(); edit(state.ranking[0] ?? 0); }
  else if (e.key === "t" || e.key === "T") { state.verdict = "tie"; state.ranking = []; render(); }
  else if (e.key === "b" || e.key === "B") { state.verdict = "all_bad"; state.ranking = []; render(); }
  else if (e.key === "Enter") run(submit);
  else if (e.key === "u" || e.key === "U") run(undo);
  else if (e.key === "n" || e.key === "N") run(next);
  else if (e.key === "s" || e.key === "S") run(sample);
}

window.addEventListener("DOMContentLoaded", () => {
  $("api-key").value = localStorage.getItem("llmos-api-key") || "";
  $("api-key").onchange = () => { localStorage.setItem("llmos-api-key", $("api-key").value); init(); };
  $("labeler").value = localStorage.getItem("llmos-labeler") || "";
  $("labeler").onchange = () => localStorage.setItem("llmos-labeler", $("labeler").value);
  const guard = (f) => () => f().catch((err) => status(err.message));
  $("next").onclick = guard(next);
  $("sample").onclick = guard(sample);
  $("submit").onclick = guard(submit);
  $("undo").onclick = guard(undo);
  $("tie").onclick = () => { state.verdict = "tie"; state.ranking = []; render(); };
  $("all-bad").onclick = () => { state.verdict = "all_bad"; state.ranking = []; render(); };
  $("show-models").onchange = render;
  $("export").onclick = (e) => exportJsonl(e).catch((err) => status(err.message));
  document.addEventListener("keydown", onKey);
  init();
});

async function init() {
  try {
    const { sources } = await api("GET", "/api/label/sources");
    state.sources = sources.filter((s) => s.model);
    $("model").textContent = state.sources.map((s) => s.model).join(", ");
    const down = sources.filter((s) => !s.model).map((s) => s.url);
    if (down.length) { status("not answering: " + down.join(", ")); await progress(); return; }
    await progress();
    status("");
  } catch (e) {
    status(e.message);
  }
}

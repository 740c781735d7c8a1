// The llmos web chat: conversations kept by the server (SQLite), assistant turns (tool calls
// included) run by the server and streamed from /api/chat. No framework and nothing loaded
// from elsewhere.
"use strict";

const state = { id: null, messages: [], controller: null };
const SETTINGS = ["system", "temperature", "top-p", "max-tokens"];

// -- markdown: escape every HTML character first, then add a small, fixed set of tags --------

function escapeHtml(s) {
  return s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function inline(s) {
  // s is already escaped. Images become links (no remote image is ever fetched).
  return s
    .replace(/`([^`]+)`/g, "<code>$1</code>")
    .replace(/!\[([^\]]*)\]\((https?:\/\/[^)\s]+)\)/g, '<a href="$2" rel="noopener noreferrer" target="_blank">[image: $1]</a>')
    .replace(/\[([^\]]+)\]\((https?:\/\/[^)\s]+)\)/g, '<a href="$2" rel="noopener noreferrer" target="_blank">$1</a>')
    .replace(/\*\*([^*]+)\*\*/g, "<strong>$1</strong>")
    .replace(/\*([^*]+)\*/g, "<em>$1</em>");
}

function markdown(text) {
  const out = [];
  const parts = escapeHtml(text).split(/```/);
  parts.forEach((part, i) => {
    if (i % 2 === 1) {  // inside a code fence: drop the language line, keep the rest verbatim
      out.push("<pre><code>" + part.replace(/^[\w+-]*\n/, "") + "</code></pre>");
      return;
    }
    let list = null;
    for (const line of part.split("\n")) {
      const item = line.match(/^\s*(?:[-*]|\d+\.)\s+(.*)$/);
      if (item) {
        if (!list) { list = /^\s*\d/.test(line) ? "ol" : "ul"; out.push(`<${list}>`); }
        out.push("<li>" + inline(item[1]) + "</li>");
        continue;
      }
      if (list) { out.push(`</${list}>`); list = null; }
      const h = line.match(/^(#{1,4})\s+(.*)$/);
      if (h) out.push(`<h${h[1].length + 2}>${inline(h[2])}</h${h[1].length + 2}>`);
      else if (line.trim()) out.push("<p>" + inline(line) + "</p>");
    }
    if (list) out.push(`</${list}>`);
  });
  return out.join("");
}

// -- the server ------------------------------------------------------------------------------

function status(text) { $("status").textContent = text || ""; }

// -- rendering -------------------------------------------------------------------------------

function bubble(m) {
  const div = document.createElement("div");
  div.className = "msg " + m.role;
  if (m.role === "assistant") div.innerHTML = markdown(m.content || "");
  else if (m.role === "tool") div.textContent = "tool result: " + m.content;
  else div.textContent = m.content || "";
  for (const a of m.attachments || []) div.appendChild(attachment(a));
  if (m.tool_calls) {
    for (const c of m.tool_calls) {
      const t = document.createElement("div");
      t.className = "msg tool";
      t.textContent = `tool call: ${c.function.name}(${c.function.arguments})`;
      div.appendChild(t);
    }
  }
  if (m.role === "assistant" && m.content && state.messages.includes(m)) div.appendChild(fixButton(m, div));
  $("messages").appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

// "Fix this answer": the person rewrites the answer the model should have given; the
// conversation up to it, with the fix, is kept for fine-tuning (`--data store:corrections`).
function fixButton(m, div) {
  const btn = document.createElement("button");
  btn.type = "button"; btn.className = "fix"; btn.textContent = "Fix this answer";
  btn.onclick = () => {
    const ta = document.createElement("textarea");
    ta.className = "fix-text"; ta.value = m.content; ta.rows = 4;
    const saveFix = document.createElement("button");
    saveFix.type = "button"; saveFix.className = "save-fix"; saveFix.textContent = "Save fix";
    saveFix.onclick = async () => {
      const at = state.messages.indexOf(m);
      const system = $("system").value.trim();
      const fixed = { role: "assistant", content: ta.value };
      const messages = (system ? [{ role: "system", content: system }] : [])
        .concat(state.messages.slice(0, at), [fixed]);
      try {
        await api("POST", "/api/corrections", { messages, original: m.content });
        state.messages[at] = fixed;
        await save({});
        showMessages();
        status("fix saved for fine-tuning");
      } catch (e) { status(e.message); }
    };
    btn.replaceWith(ta, saveFix);
    ta.focus();
  };
  return btn;
}

// A file a tool made (a python plot): a raster image is shown inline, anything else is a
// download link. Only this server's /files/ URLs are used, whatever a stored message says.
function attachment(a) {
  const url = typeof a.url === "string" && /^\/files\/[\w-]+\/[\w.-]+$/.test(a.url) ? a.url : null;
  if (!url) return document.createTextNode("");
  const fig = document.createElement("figure");
  if (/^image\/(png|jpeg|gif|webp)$/.test(a.type)) {
    const img = document.createElement("img");
    img.src = url; img.alt = a.name; img.className = "attachment";
    fig.appendChild(img);
  }
  const link = document.createElement("a");
  link.href = url; link.textContent = a.name; link.download = a.name;
  const cap = document.createElement("figcaption");
  cap.appendChild(link);
  fig.appendChild(cap);
  return fig;
}

function showMessages() {
  $("messages").replaceChildren();
  state.messages.filter((m) => m.role !== "system").forEach(bubble);
}

async function refreshList() {
  const { data } = await api("GET", "/api/conversations");
  const ul = $("conversations");
  ul.replaceChildren();
  for (const c of data) {
    const li = document.createElement("li");
    li.className = "conv-item" + (c.id === state.id ? " active" : "");
    li.dataset.id = c.id;
    const title = document.createElement("span");
    title.className = "title";
    title.textContent = c.title;
    title.onclick = () => openConversation(c.id);
    const rename = document.createElement("button");
    rename.className = "rename"; rename.title = "Rename"; rename.textContent = "✎";
    rename.onclick = async () => {
      const t = prompt("Rename conversation", c.title);
      if (t) { await api("PUT", "/api/conversations/" + c.id, { title: t }); refreshList(); }
    };
    const del = document.createElement("button");
    del.className = "delete"; del.title = "Delete"; del.textContent = "✕";
    del.onclick = async () => {
      if (!confirm("Delete this conversation?")) return;
      await api("DELETE", "/api/conversations/" + c.id);
      if (c.id === state.id) newChat();
      refreshList();
    };
    li.append(title, rename, del);
    ul.appendChild(li);
  }
}

async function openConversation(id) {
  const c = await api("GET", "/api/conversations/" + id);
  state.id = c.id;
  state.messages = c.messages;
  for (const k of SETTINGS) if (c.settings[k] !== undefined) $(k).value = c.settings[k];
  showMessages();
  refreshList();
}

function newChat() {
  state.id = null;
  state.messages = [];
  showMessages();
  refreshList();
}

function settings() {
  return Object.fromEntries(SETTINGS.map((k) => [k, $(k).value]));
}

async function save(extra) {
  return api("PUT", "/api/conversations/" + state.id, { messages: state.messages, settings: settings(), ...extra });
}

// -- sending and streaming -------------------------------------------------------------------

async function send(text) {
  const isNew = !state.id;
  if (isNew) state.id = crypto.randomUUID().replace(/-/g, "");
  state.messages.push({ role: "user", content: text });
  bubble(state.messages[state.messages.length - 1]);
  await save(isNew ? { title: text.slice(0, 60) } : {});
  refreshList();
  state.controller = new AbortController();
  $("send").hidden = true; $("stop").hidden = false; status("");
  try {
    await streamTurn();
  } catch (e) {
    if (e.name !== "AbortError") status(e.message);
  } finally {
    state.controller = null;
    $("send").hidden = false; $("stop").hidden = true;
    await save({});
  }
}

// The assistant's turn, run by the server (/api/chat): its tool calls run there, through the
// same loop as `llmos chat`. Text streams into a draft bubble; each finished message (a call,
// a tool's result, the answer) replaces the draft and is kept. Stopping keeps the draft.
// A side effect (send_message) the person has not confirmed is refused by the server, which
// says so with a "confirm" event; "Allow" runs the same turn again with that exact call allowed.
async function streamTurn(confirmed = []) {
  const system = $("system").value.trim();
  const messages = (system ? [{ role: "system", content: system }] : []).concat(state.messages);
  const start = state.messages.length;
  const asks = [];
  let draft = { role: "assistant", content: "" };
  let div = bubble(draft);
  try {
    const r = await fetch("/api/chat", {
      method: "POST", headers: headers(), signal: state.controller.signal,
      body: JSON.stringify({
        messages, temperature: Number($("temperature").value),
        top_p: Number($("top-p").value), max_tokens: Number($("max-tokens").value),
        profile: $("profile").value || null, memory: $("use-memory").checked,
        custom_instructions: $("custom-instructions").value.trim() || null,
        conversation: state.id, confirm: confirmed,
      }),
    });
    if (!r.ok) throw new Error((await r.json()).error.message);
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      const events = buf.split("\n\n");
      buf = events.pop();
      for (const ev of events) {
        const data = ev.replace(/^data: /, "");
        if (data === "[DONE]") continue;
        const e = JSON.parse(data);
        if (e.type === "text") {
          draft.content += e.text;
          div.innerHTML = markdown(draft.content);
          div.scrollIntoView({ block: "end" });
        } else if (e.type === "message") {
          div.remove();
          state.messages.push(e.message);
          bubble(e.message);
          draft = { role: "assistant", content: "" };
          div = bubble(draft);
        } else if (e.type === "error" || e.type === "notice") {
          status(e.message);
        } else if (e.type === "confirm") {
          asks.push(e.call);
        }
      }
    }
  } finally {
    div.remove();
    if (draft.content) { state.messages.push(draft); bubble(draft); }
  }
  if (asks.length) askToConfirm(asks[0], start);
}

function askToConfirm(call, start) {
  const div = document.createElement("div");
  div.className = "msg confirm";
  div.textContent = `The assistant wants to run ${call.name}(${JSON.stringify(call.arguments)}). `;
  const allow = document.createElement("button");
  allow.type = "button"; allow.className = "allow"; allow.textContent = "Allow";
  const deny = document.createElement("button");
  deny.type = "button"; deny.className = "deny"; deny.textContent = "Deny";
  deny.onclick = () => div.remove();
  allow.onclick = async () => {
    div.remove();
    state.messages.length = start;  // the turn again, from where it began, with the call allowed
    showMessages();
    state.controller = new AbortController();
    try { await streamTurn([call]); } finally { state.controller = null; await save({}); }
  };
  div.append(allow, deny);
  $("messages").appendChild(div);
}

// -- wiring ----------------------------------------------------------------------------------

window.addEventListener("DOMContentLoaded", async () => {
  $("api-key").value = localStorage.getItem("llmos-api-key") || "";
  $("api-key").onchange = () => { localStorage.setItem("llmos-api-key", $("api-key").value); init(); };
  $("new-chat").onclick = newChat;
  $("stop").onclick = () => state.controller && state.controller.abort();
  $("composer").onsubmit = (e) => {
    e.preventDefault();
    const text = $("input").value.trim();
    if (!text || state.controller) return;
    $("input").value = "";
    send(text).catch((err) => status(err.message));
  };
  $("input").onkeydown = (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); }
  };
  init();
});

async function init() {
  try {
    const { data } = await api("GET", "/v1/models");
    $("model").textContent = data[0].id;
    if (typeof loadProfiles === "function") await loadProfiles();
    await refreshList();
    status("");
  } catch (e) {
    status(e.message);
  }
}

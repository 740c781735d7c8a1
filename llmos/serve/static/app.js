// The llmos web chat: conversations kept by the server (SQLite), replies streamed from
// /v1/chat/completions. No framework and nothing loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { id: null, messages: [], controller: null, tools: [] };
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

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = localStorage.getItem("llmos-api-key");
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

async function api(method, path, body) {
  const r = await fetch(path, { method, headers: headers(), body: body ? JSON.stringify(body) : undefined });
  const data = await r.json();
  if (!r.ok) throw new Error(data.error ? data.error.message : r.statusText);
  return data;
}

function status(text) { $("status").textContent = text || ""; }

// -- rendering -------------------------------------------------------------------------------

function bubble(m) {
  const div = document.createElement("div");
  div.className = "msg " + m.role;
  if (m.role === "assistant") div.innerHTML = markdown(m.content || "");
  else if (m.role === "tool") div.textContent = "tool result: " + m.content;
  else div.textContent = m.content || "";
  if (m.tool_calls) {
    for (const c of m.tool_calls) {
      const t = document.createElement("div");
      t.className = "msg tool";
      t.textContent = `tool call: ${c.function.name}(${c.function.arguments})`;
      div.appendChild(t);
    }
  }
  $("messages").appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
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
    // The model may call the server's tools (the calculator): run each call, show it, and
    // let the model go on with the result, as `llmos chat` does.
    for (let round = 0; round < 4; round++) {
      const reply = await streamReply();
      if (!reply.tool_calls) break;
      for (const call of reply.tool_calls) {
        const r = await api("POST", "/api/tools/run", call.function);
        const result = { role: "tool", tool_call_id: call.id, content: r.content };
        state.messages.push(result);
        bubble(result);
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") status(e.message);
  } finally {
    state.controller = null;
    $("send").hidden = false; $("stop").hidden = true;
    await save({});
  }
}

// One assistant message, streamed into its bubble; kept (even if stopped half way).
async function streamReply() {
  const system = $("system").value.trim();
  const messages = (system ? [{ role: "system", content: system }] : []).concat(state.messages);
  const reply = { role: "assistant", content: "" };
  state.messages.push(reply);
  const div = bubble(reply);
  try {
    const r = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), signal: state.controller.signal,
      body: JSON.stringify({
        model: $("model").textContent, messages, stream: true, tools: state.tools,
        temperature: Number($("temperature").value), top_p: Number($("top-p").value),
        max_tokens: Number($("max-tokens").value),
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
        const delta = JSON.parse(data).choices[0]?.delta || {};
        if (delta.content) reply.content += delta.content;
        if (delta.tool_calls) reply.tool_calls = delta.tool_calls;
        div.innerHTML = markdown(reply.content);
        div.scrollIntoView({ block: "end" });
      }
    }
  } finally {
    div.remove();
    bubble(reply);
  }
  return reply;
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
    state.tools = (await api("GET", "/api/tools")).data;
    await refreshList();
    status("");
  } catch (e) {
    status(e.message);
  }
}

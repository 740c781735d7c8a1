// The LLM OS panels of the web chat: profiles ("GPTs": pick one to talk to, create and edit
// them; the server keeps them as TOML files) and memory (what the assistant remembers across
// chats, shown and editable; kept in the server's SQLite). The person's own custom
// instructions are kept in this browser and sent with every turn.
"use strict";

let profiles = [];

async function loadProfiles() {
  const { data } = await api("GET", "/api/profiles");
  profiles = data;
  const select = $("profile");
  const chosen = select.value || localStorage.getItem("llmos-profile") || "";
  select.replaceChildren(new Option("the model itself", ""));
  for (const p of profiles) select.appendChild(new Option(`${p.name}: ${p.description || "profile"}`, p.name));
  select.value = profiles.some((p) => p.name === chosen) ? chosen : "";
  fillProfileForm(profiles.find((p) => p.name === select.value));
  await loadMemories();
}

function fillProfileForm(p) {
  $("pf-name").value = p ? p.name : "";
  $("pf-description").value = p ? p.description : "";
  $("pf-instructions").value = p ? p.instructions : "";
  $("pf-tools").value = p ? p.tools.join(", ") : "";
  $("pf-knowledge").value = p && p.knowledge.length ? p.knowledge[0] : "";
  $("pf-temperature").value = p && p.sampling.temperature !== undefined ? p.sampling.temperature : "";
}

async function saveProfile(e) {
  e.preventDefault();
  const name = $("pf-name").value.trim();
  const body = {
    description: $("pf-description").value, instructions: $("pf-instructions").value,
    tools: $("pf-tools").value.split(",").map((t) => t.trim()).filter(Boolean),
    knowledge: $("pf-knowledge").value.trim() ? [$("pf-knowledge").value.trim()] : [],
    sampling: $("pf-temperature").value === "" ? {} : { temperature: Number($("pf-temperature").value) },
  };
  try {
    await api("PUT", "/api/profiles/" + encodeURIComponent(name), body);
    $("profile").value = name;
    localStorage.setItem("llmos-profile", name);
    await loadProfiles();
    status(`profile ${name} saved`);
  } catch (err) { status(err.message); }
}

async function deleteProfile() {
  const name = $("pf-name").value.trim();
  if (!name || !confirm(`Delete the profile ${name}?`)) return;
  try {
    await api("DELETE", "/api/profiles/" + encodeURIComponent(name));
    $("profile").value = "";
    localStorage.removeItem("llmos-profile");
    await loadProfiles();
  } catch (err) { status(err.message); }
}

async function loadMemories() {
  const { data } = await api("GET", "/api/memory");
  const ul = $("memories");
  ul.replaceChildren();
  for (const m of data) {
    const li = document.createElement("li");
    li.className = "memory";
    const text = document.createElement("span");
    text.textContent = m.text;
    text.title = `${m.source}, ${new Date(m.created * 1000).toLocaleString()}`;
    const edit = document.createElement("button");
    edit.type = "button"; edit.className = "edit-memory"; edit.title = "Edit"; edit.textContent = "✎";
    edit.onclick = async () => {
      const t = prompt("Edit memory", m.text);
      if (t) { await api("PUT", "/api/memory/" + m.id, { text: t }); loadMemories(); }
    };
    const del = document.createElement("button");
    del.type = "button"; del.className = "forget"; del.title = "Forget"; del.textContent = "✕";
    del.onclick = async () => { await api("DELETE", "/api/memory/" + m.id); loadMemories(); };
    li.append(text, edit, del);
    ul.appendChild(li);
  }
}

window.addEventListener("DOMContentLoaded", () => {
  $("custom-instructions").value = localStorage.getItem("llmos-custom-instructions") || "";
  $("custom-instructions").onchange = () =>
    localStorage.setItem("llmos-custom-instructions", $("custom-instructions").value);
  $("use-memory").checked = localStorage.getItem("llmos-use-memory") === "1";
  $("use-memory").onchange = () => localStorage.setItem("llmos-use-memory", $("use-memory").checked ? "1" : "0");
  $("profile").onchange = () => {
    localStorage.setItem("llmos-profile", $("profile").value);
    fillProfileForm(profiles.find((p) => p.name === $("profile").value));
  };
  $("profile-form").onsubmit = saveProfile;
  $("pf-delete").onclick = deleteProfile;
  $("memory-form").onsubmit = async (e) => {
    e.preventDefault();
    const text = $("memory-text").value.trim();
    if (!text) return;
    try { await api("POST", "/api/memory", { text }); $("memory-text").value = ""; loadMemories(); }
    catch (err) { status(err.message); }
  };
});

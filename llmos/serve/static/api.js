// Helpers both pages share: element lookup and calls to this server with the API key the
// person entered (kept in localStorage, never sent anywhere else).
"use strict";

const $ = (id) => document.getElementById(id);

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

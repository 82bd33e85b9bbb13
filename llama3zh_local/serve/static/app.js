// llama3zh chat page: talks to this server's /v1 API only; conversations live in localStorage.
// Model output is never inserted as HTML: it is escaped first, then a small Markdown subset is
// turned into a fixed set of tags (links only for http/https).
"use strict";

const $ = (id) => document.getElementById(id);
const STORE = "llama3zh.chats.v1";
const SETTINGS = "llama3zh.settings.v1";
const DEFAULT_SYSTEM = "You are a helpful assistant. 你是一个乐于助人的助手。";

let chats = load(STORE, []);
let settings = load(SETTINGS, { system: DEFAULT_SYSTEM, temperature: 0.2, key: "", model: "" });
let current = chats.length ? chats[0].id : null;
let controller = null;

function load(key, fallback) {
  try { const v = JSON.parse(localStorage.getItem(key)); return v ?? fallback; }
  catch (e) { return fallback; }
}
function save() {
  localStorage.setItem(STORE, JSON.stringify(chats));
  localStorage.setItem(SETTINGS, JSON.stringify(settings));
}

function escapeHtml(s) {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
          .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
}

function inline(s) {  // s is already escaped
  return s
    .replace(/`([^`]+)`/g, "<code>$1</code>")
    .replace(/\*\*([^*]+)\*\*/g, "<strong>$1</strong>")
    .replace(/(^|[^*])\*([^*\s][^*]*)\*/g, "$1<em>$2</em>")
    .replace(/\[([^\]]+)\]\((https?:\/\/[^\s)]+)\)/g,
             '<a href="$2" rel="noopener noreferrer nofollow" target="_blank">$1</a>');
}

function markdown(text) {
  const out = [];
  const parts = text.split(/```/);
  parts.forEach((part, i) => {
    if (i % 2 === 1) {  // a fenced code block (its first line may name the language)
      const body = part.replace(/^[^\n]*\n/, "");
      out.push("<pre><code>" + escapeHtml(body) + "</code></pre>");
      return;
    }
    let list = null;
    for (const raw of escapeHtml(part).split("\n")) {
      const item = raw.match(/^\s*(?:[-*+]|\d+\.)\s+(.*)$/);
      if (item) {
        if (!list) { list = []; }
        list.push("<li>" + inline(item[1]) + "</li>");
        continue;
      }
      if (list) { out.push("<ul>" + list.join("") + "</ul>"); list = null; }
      const h = raw.match(/^(#{1,4})\s+(.*)$/);
      if (h) { out.push(`<h${h[1].length + 2}>` + inline(h[2]) + `</h${h[1].length + 2}>`); }
      else if (raw.trim()) { out.push("<p>" + inline(raw) + "</p>"); }
    }
    if (list) { out.push("<ul>" + list.join("") + "</ul>"); }
  });
  return out.join("");
}

function chat() { return chats.find((c) => c.id === current); }

function newChat() {
  const c = { id: String(Date.now()) + Math.random().toString(16).slice(2, 6),
              title: "新对话 New chat", messages: [] };
  chats.unshift(c);
  current = c.id;
  save();
  render();
}

function renderList() {
  const ul = $("chats");
  ul.textContent = "";
  for (const c of chats) {
    const li = document.createElement("li");
    li.className = c.id === current ? "active" : "";
    const span = document.createElement("span");
    span.textContent = c.title;
    const del = document.createElement("button");
    del.textContent = "✕";
    del.title = "删除 Delete";
    del.onclick = (ev) => {
      ev.stopPropagation();
      chats = chats.filter((x) => x.id !== c.id);
      if (current === c.id) { current = chats.length ? chats[0].id : null; }
      save(); render();
    };
    li.onclick = () => { current = c.id; render(); };
    li.append(span, del);
    ul.append(li);
  }
}

function bubble(m) {
  const div = document.createElement("div");
  div.className = "msg " + m.role + (m.error ? " error" : "");
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = m.role === "user" ? "你 You" : (m.error ? "错误 Error" : "助手 Assistant");
  const body = document.createElement("div");
  body.className = "body";
  if (m.role === "user" || m.error) { body.textContent = m.content; }
  else { body.innerHTML = markdown(m.content); }
  div.append(who, body);
  if (m.stats) {
    const st = document.createElement("div");
    st.className = "stats";
    st.textContent = m.stats;
    div.append(st);
  }
  return div;
}

function render() {
  renderList();
  const log = $("log");
  log.textContent = "";
  const c = chat();
  if (c) { for (const m of c.messages) { log.append(bubble(m)); } }
  log.scrollTop = log.scrollHeight;
}

function headers() {
  const h = { "Content-Type": "application/json" };
  if (settings.key) { h["Authorization"] = "Bearer " + settings.key; }
  return h;
}

async function loadModels() {
  const sel = $("model");
  try {
    const r = await fetch("/v1/models", { headers: headers() });
    const data = await r.json();
    if (!r.ok) { throw new Error(data.error ? data.error.message : r.statusText); }
    sel.textContent = "";
    for (const m of data.data) {
      const o = document.createElement("option");
      o.value = o.textContent = m.id;
      sel.append(o);
    }
    if (settings.model && data.data.some((m) => m.id === settings.model)) {
      sel.value = settings.model;
    }
    $("status").textContent = data.data.length ? "" : "没有模型 No models: llama3zh pull …";
  } catch (e) {
    $("status").textContent = "无法列出模型 Cannot list models: " + e.message;
  }
}

function stats(usage, timings) {
  if (!usage) { return ""; }
  let s = `${usage.completion_tokens} tokens`;
  if (timings && timings.predicted_per_second) {
    s += ` · ${timings.predicted_per_second.toFixed(1)} tok/s`;
  }
  const cached = usage.prompt_tokens_details ? usage.prompt_tokens_details.cached_tokens : 0;
  s += ` · 提示 prompt ${usage.prompt_tokens} (${cached} cached)`;
  return s;
}

async function send(text) {
  if (!current) { newChat(); }
  const c = chat();
  c.messages.push({ role: "user", content: text });
  if (c.messages.length === 1) { c.title = text.slice(0, 40); }
  const answer = { role: "assistant", content: "" };
  c.messages.push(answer);
  save(); render();
  const log = $("log");
  const node = log.lastChild.querySelector(".body");
  const history = c.messages.slice(0, -1).filter((m) => !m.error)
                   .map((m) => ({ role: m.role, content: m.content }));
  const messages = settings.system ? [{ role: "system", content: settings.system }, ...history]
                                   : history;
  controller = new AbortController();
  $("send").classList.add("hidden");
  $("stop").classList.remove("hidden");
  let usage = null, timings = null;
  try {
    const r = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), signal: controller.signal,
      body: JSON.stringify({ model: $("model").value, messages, stream: true,
                             temperature: settings.temperature,
                             stream_options: { include_usage: true } }),
    });
    if (!r.ok) {
      const data = await r.json().catch(() => ({}));
      throw new Error(data.error ? data.error.message : `HTTP ${r.status}`);
    }
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) { break; }
      buf += decoder.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, i);
        buf = buf.slice(i + 2);
        if (!event.startsWith("data: ") || event === "data: [DONE]") { continue; }
        const data = JSON.parse(event.slice(6));
        if (data.error) { throw new Error(data.error.message); }
        if (data.usage) { usage = data.usage; timings = data.timings; }
        for (const ch of data.choices || []) {
          if (ch.delta && ch.delta.content) {
            answer.content += ch.delta.content;
            node.innerHTML = markdown(answer.content);
            log.scrollTop = log.scrollHeight;
          }
        }
      }
    }
    answer.stats = stats(usage, timings);
  } catch (e) {
    if (e.name === "AbortError") {
      answer.stats = "已停止 Stopped";
    } else {
      answer.error = true;
      answer.content = (answer.content ? answer.content + "\n\n" : "") + e.message;
    }
  } finally {
    controller = null;
    $("send").classList.remove("hidden");
    $("stop").classList.add("hidden");
    save(); render();
  }
}

$("form").onsubmit = (ev) => {
  ev.preventDefault();
  const text = $("input").value.trim();
  if (!text || controller) { return; }
  $("input").value = "";
  send(text);
};
$("input").onkeydown = (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
    ev.preventDefault();
    $("form").requestSubmit();
  }
};
$("stop").onclick = () => { if (controller) { controller.abort(); } };
$("new").onclick = newChat;
$("temp").value = settings.temperature;
$("tempv").textContent = settings.temperature;
$("temp").oninput = () => {
  settings.temperature = parseFloat($("temp").value);
  $("tempv").textContent = settings.temperature;
  save();
};
$("system").value = settings.system;
$("system").onchange = () => { settings.system = $("system").value; save(); };
$("key").value = settings.key;
$("key").onchange = () => { settings.key = $("key").value.trim(); save(); loadModels(); };
$("model").onchange = () => { settings.model = $("model").value; save(); };

render();
loadModels();

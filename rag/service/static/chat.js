// Enclave chat page: talks only to this origin's API, renders text with textContent only
// (never innerHTML), keeps the reader's token in sessionStorage (this tab only).
"use strict";

const TOKEN_KEY = "enclave.token";
const state = { history: [], busy: false };
const $ = (id) => document.getElementById(id);

const FAILURE_TEXT = {
  error: "The model is unavailable right now, so there is no answer. Try again later.",
  timeout: "The model did not answer in time, so there is no answer. Try again, or ask a shorter question.",
  invalid_answer: "The model's reply did not pass the checks, so it is not shown.",
};

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

function headers() {
  const h = { "Content-Type": "application/json" };
  if (token()) h.Authorization = "Bearer " + token();
  return h;
}

function show(id, visible) { $(id).hidden = !visible; }

async function whoami() {
  let reply;
  try {
    reply = await fetch("/v1/whoami", { headers: headers() });
  } catch (e) {
    return { error: "The Enclave service cannot be reached." };
  }
  if (reply.status === 401) return null;
  if (!reply.ok) return { error: "The service answered " + reply.status + "." };
  return reply.json();
}

async function start() {
  const me = await whoami();
  if (!me || me.error) {
    show("identity", false); show("chat", false); show("sign-in", true);
    $("sign-in-error").textContent = me && me.error ? me.error : (token() ? "That token was not accepted." : "");
    return;
  }
  $("who").textContent = me.user;
  $("groups").textContent = me.groups.length ? "(" + me.groups.join(", ") + ")" : "(no groups)";
  show("sign-in", false); show("identity", true); show("chat", true);
  $("question").focus();
}

function addTurn(role, text) {
  const li = document.createElement("li");
  li.className = role;
  li.setAttribute("data-testid", role === "user" ? "user-turn" : "assistant-turn");
  const body = document.createElement("div");
  body.className = "answer";
  body.setAttribute("data-testid", role === "user" ? "user-text" : "answer-text");
  body.textContent = text;
  li.appendChild(body);
  $("conversation").appendChild(li);
  li.scrollIntoView({ block: "end" });
  return li;
}

function addMeta(li, text, testid) {
  const p = document.createElement("p");
  p.className = "meta";
  p.setAttribute("data-testid", testid);
  p.textContent = text;
  li.appendChild(p);
  return p;
}

function openPassage(c) {
  $("passage-number").textContent = "[" + c.number + "]";
  $("passage-source").textContent = c.source_uri;
  $("passage-section").textContent = c.section || "—";
  $("passage-access").textContent = c.access || "—";
  $("passage-excerpt").textContent = c.excerpt;
  show("passage", true);
  document.body.classList.add("reading");
}

function renderFinal(li, body, last) {
  const outcome = last.outcome;
  if (outcome === "no_results") {
    li.classList.add("no-answer");
    body.textContent = "No answer in your documents: nothing you may read matches this question.";
  } else if (outcome !== "ok") {
    li.classList.add("failed");
    body.textContent = FAILURE_TEXT[outcome] || last.answer;
  } else {
    body.textContent = last.answer;  // the checked answer replaces what streamed
    for (const c of last.citations) {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "marker";
      b.setAttribute("data-testid", "citation");
      b.textContent = "[" + c.number + "]";
      b.title = c.source_uri;
      b.addEventListener("click", () => openPassage(c));
      body.appendChild(b);
    }
  }
  addMeta(li, "Audit record " + last.audit_id + (last.prompt_audit_id ? " (prompt " + last.prompt_audit_id + ")" : ""),
          "audit-id");
  return outcome === "ok" ? last.answer : "";
}

async function readEvents(reply, onEvent) {
  const reader = reply.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        onEvent(JSON.parse(data));
      }
    }
  }
}

async function ask(question) {
  state.busy = true;
  $("ask").disabled = true;
  $("status").textContent = "";
  addTurn("user", question);
  const li = addTurn("assistant", "");
  li.classList.add("streaming");
  const body = li.querySelector(".answer");
  const messages = state.history.concat([{ role: "user", content: question }]);
  let final = null;
  try {
    const reply = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(),
      body: JSON.stringify({ model: "enclave", stream: true, messages: messages }),
    });
    if (reply.status === 401) { li.remove(); sessionStorage.removeItem(TOKEN_KEY); await start(); return; }
    if (!reply.ok) {
      let message = "The service answered " + reply.status + ".";
      try { message = (await reply.json()).error.message; } catch (e) { /* keep the status line */ }
      if (reply.status === 503) {
        message = "The model is busy. Try again in " + (reply.headers.get("Retry-After") || "a few") + " seconds.";
      }
      li.classList.add("failed");
      body.textContent = message;
      return;
    }
    await readEvents(reply, (event) => {
      if (event.error) { li.classList.add("failed"); body.textContent = event.error.message; return; }
      const choice = event.choices && event.choices[0];
      if (choice && choice.finish_reason) { final = event; return; }
      if (choice && choice.delta && choice.delta.content && !final) {
        body.textContent += choice.delta.content;
        li.setAttribute("data-streamed-pieces", String(Number(li.getAttribute("data-streamed-pieces") || 0) + 1));
      }
    });
    if (final) {
      const answer = renderFinal(li, body, final);
      state.history.push({ role: "user", content: question });
      if (answer) state.history.push({ role: "assistant", content: answer });
    }
  } catch (e) {
    li.classList.add("failed");
    body.textContent = "The Enclave service cannot be reached. Check your connection and try again.";
  } finally {
    li.classList.remove("streaming");
    li.setAttribute("data-done", "true");
    state.busy = false;
    $("ask").disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    start();
  });
  $("sign-out").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    state.history = [];
    $("conversation").textContent = "";
    start();
  });
  $("ask-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const q = $("question").value.trim();
    if (!q || state.busy) return;
    $("question").value = "";
    ask(q);
  });
  $("question").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("ask-form").requestSubmit(); }
  });
  $("new-conversation").addEventListener("click", () => { state.history = []; $("conversation").textContent = ""; });
  $("passage-close").addEventListener("click", () => {
    show("passage", false);
    document.body.classList.remove("reading");
  });
  start();
});

// The chat page: conversations, a streaming reply, and what to show when things go wrong.
//
// Stored conversations when the server has them (`/v1/conversations`); otherwise one
// conversation kept in this tab, sent whole to `POST /v1/streams`. The live reply's stream id,
// last event id and text are kept in sessionStorage, so a reload re-attaches to it.

import { streamChat } from "./tokenrelay.js";
import { render } from "./markdown.js";

const STORE = {
  key: "tokenrelay.key",
  model: "tokenrelay.model",
  live: "tokenrelay.live",
  memory: "tokenrelay.memory",
  conversation: "tokenrelay.conversation",
};

const HUMAN_ERRORS = {
  unauthorized: "This server needs a valid API key.",
  forbidden: "This key is not allowed to do that.",
  not_found: "That is no longer on the server.",
  invalid_request: "The server refused the request.",
  payload_too_large: "The message is too long for this server.",
  rate_limited: "Too many requests right now.",
  concurrency_limited: "Too many replies are streaming at once.",
  budget_exceeded: "This key has used up its budget.",
  limiter_unavailable: "The server cannot check its limits right now.",
  upstream_unavailable: "The model's server could not be reached.",
  upstream_rate_limited: "The model's provider is rate limiting this server.",
  upstream_timeout: "The model took too long.",
  first_token_timeout: "The model did not start answering in time.",
  idle_timeout: "The model stopped sending in the middle of the reply.",
  context_length_exceeded: "The conversation is too long for this model.",
  content_filter: "The provider's content filter stopped the reply.",
  upstream_error: "The model failed while answering.",
  server_shutdown: "The server is restarting.",
  network_error: "The connection to tokenrelay was lost.",
};

const $ = (id) => document.getElementById(id);
const ui = {
  sidebar: $("sidebar"),
  menu: $("menu"),
  newChat: $("new-chat"),
  list: $("conversations"),
  memoryNote: $("memory-note"),
  title: $("title"),
  model: $("model"),
  messages: $("messages"),
  empty: $("empty"),
  status: $("status"),
  composer: $("composer"),
  input: $("input"),
  send: $("send"),
  stop: $("stop"),
  keyDialog: $("key-dialog"),
  keyForm: $("key-form"),
  keyInput: $("key-input"),
};

const state = {
  mode: null, // "conversations" | "memory"
  starting: Promise.resolve(), // the page's connecting (start), which a message waits for
  conversationId: null,
  conversations: [],
  messages: [], // {role, content, status, streamId, el}
  live: null,
};

class Unauthorized extends Error {}

// Storage can be unavailable (private modes, sandboxed frames): the page still works.
function load(storage, name) {
  try {
    return JSON.parse(storage.getItem(name));
  } catch {
    return null;
  }
}

function save(storage, name, value) {
  try {
    if (value === null) storage.removeItem(name);
    else storage.setItem(name, JSON.stringify(value));
  } catch {
    // Quota or privacy settings: losing reload recovery is better than breaking the chat.
  }
}

/** A key in the address (the link `tokenrelay serve` prints) moves to localStorage. */
function takeKeyFromAddress() {
  const url = new URL(location.href);
  const hash = new URLSearchParams(url.hash.slice(1));
  let key = null;
  for (const params of [url.searchParams, hash]) {
    for (const name of ["key", "token"]) {
      if (params.has(name)) {
        key ??= params.get(name);
        params.delete(name);
      }
    }
  }
  if (key === null) return;
  save(localStorage, STORE.key, key);
  const rest = hash.toString();
  history.replaceState(history.state, "", url.pathname + url.search + (rest ? `#${rest}` : ""));
}

function authHeaders() {
  const key = load(localStorage, STORE.key);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function api(path, init = {}) {
  const response = await fetch(path, {
    ...init,
    headers: { Accept: "application/json", ...authHeaders(), ...init.headers },
  });
  if (response.status === 401) throw new Unauthorized();
  return response;
}

async function json(path, init) {
  const response = await api(path, init);
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const error = new Error(body?.error?.message ?? `HTTP ${response.status}`);
    error.code = body?.error?.code ?? `http_${response.status}`;
    error.status = response.status;
    throw error;
  }
  return body;
}

function askForKey() {
  if (ui.keyDialog.open) return;
  ui.keyInput.value = "";
  ui.keyDialog.showModal();
}

// ---- start -------------------------------------------------------------------------------

async function start() {
  leaveLiveReply();
  setStatus("Connecting…");
  try {
    await loadModels();
    await detectConversations();
  } catch (exc) {
    if (exc instanceof Unauthorized) {
      setStatus("This server needs an API key.");
      askForKey();
      return;
    }
    showError(exc, connect);
    return;
  }
  setStatus("");
  if (state.mode === "memory") {
    restoreMemory();
  } else {
    await loadConversations();
    const remembered = load(sessionStorage, STORE.conversation);
    if (remembered && state.conversations.some((c) => c.id === remembered)) {
      await openConversation(remembered);
    }
  }
  ui.input.focus();
}

async function loadModels() {
  const body = await json("v1/models");
  const chosen = load(localStorage, STORE.model);
  ui.model.replaceChildren(
    ...body.data.map((model) => new Option(model.id, model.id, false, model.id === chosen)),
  );
}

async function detectConversations() {
  const response = await api("v1/conversations?limit=1");
  state.mode = response.status === 404 ? "memory" : "conversations";
  if (state.mode === "conversations" && !response.ok) {
    throw Object.assign(new Error(`HTTP ${response.status}`), { code: `http_${response.status}` });
  }
  ui.memoryNote.hidden = state.mode !== "memory";
}

// ---- conversations -----------------------------------------------------------------------

async function loadConversations() {
  const body = await json("v1/conversations?limit=100");
  state.conversations = body.data;
  renderList();
}

function renderList() {
  const items = state.conversations.map((conversation) => {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = conversation.title || "New conversation";
    button.title = button.textContent;
    if (conversation.id === state.conversationId) button.setAttribute("aria-current", "page");
    button.addEventListener("click", () => {
      openConversation(conversation.id).catch(reportUnexpected);
      closeSidebar();
    });
    const item = document.createElement("li");
    item.append(button);
    return item;
  });
  ui.list.replaceChildren(...items);
  const current = state.conversations.find((c) => c.id === state.conversationId);
  ui.title.textContent = current?.title || "tokenrelay";
}

async function openConversation(id) {
  leaveLiveReply();
  state.conversationId = id;
  save(sessionStorage, STORE.conversation, id);
  clearMessages();
  renderList();
  const path = `v1/conversations/${encodeURIComponent(id)}/messages?order=desc&limit=100`;
  const body = await json(path);
  if (state.conversationId !== id) return;
  for (const message of body.data.reverse()) {
    if (message.role !== "user" && message.role !== "assistant") continue;
    addMessage({
      role: message.role,
      content: message.content,
      status: message.status,
      streamId: message.stream_id,
      errorCode: message.error_code,
      ...fromParts(message.parts),
    });
  }
  const conversation = state.conversations.find((c) => c.id === id);
  if (conversation?.model) selectModel(conversation.model);
  reattach();
}

/** A stored message's reasoning, tool calls and tool results, as a live reply has them. */
function fromParts(parts) {
  const out = { reasoning: "", redacted: false, toolCalls: [], toolResults: [] };
  for (const part of parts ?? []) {
    if (part.type === "reasoning") out.reasoning += part.text;
    else if (part.type === "redacted_reasoning") out.redacted = true;
    else if (part.type === "tool_call") out.toolCalls.push({ ...part, done: true });
    else if (part.type === "tool_result") out.toolResults.push(part);
  }
  return out;
}

function newChat() {
  leaveLiveReply();
  state.conversationId = null;
  save(sessionStorage, STORE.conversation, null);
  if (state.mode === "memory") save(sessionStorage, STORE.memory, null);
  clearMessages();
  renderList();
  closeSidebar();
  ui.input.focus();
}

function restoreMemory() {
  clearMessages();
  for (const message of load(sessionStorage, STORE.memory) ?? []) addMessage(message);
  reattach();
}

function saveMemory() {
  if (state.mode !== "memory") return;
  const messages = state.messages.map((m) => ({
    role: m.role,
    content: m.content,
    status: m.status,
    streamId: m.streamId,
    reasoning: m.reasoning,
    toolCalls: m.toolCalls,
  }));
  save(sessionStorage, STORE.memory, messages);
}

/** After a reload or on opening a conversation: follow its reply if it is still streaming. */
function reattach() {
  const last = state.messages.at(-1);
  if (last?.role === "assistant" && last.status === "streaming" && !last.streamId) {
    // The page went away before the server named the stream: nothing to re-attach to.
    last.status = "interrupted";
    paint(last);
  }
  if (!last || last.role !== "assistant" || last.status !== "streaming") {
    updateActions();
    return;
  }
  const live = load(sessionStorage, STORE.live);
  // The text and the id were saved together, so resuming after that id neither repeats
  // nor skips; without them, the whole stream is replayed from its start.
  const resume =
    live?.streamId === last.streamId
      ? { ...live }
      : { streamId: last.streamId, lastEventId: 0, text: "" };
  follow(last, { resume });
}

// ---- messages ----------------------------------------------------------------------------

function clearMessages() {
  state.messages = [];
  ui.messages.replaceChildren(ui.empty);
  ui.empty.hidden = false;
  setStatus("");
}

function addMessage(message) {
  const el = document.createElement("article");
  el.className = `message ${message.role}`;
  const body = document.createElement("div");
  body.className = "body";
  el.append(body);
  if (message.role === "assistant") {
    const actions = document.createElement("div");
    actions.className = "actions";
    const copy = button("Copy", () => copyText(message, copy));
    copy.className = "copy";
    const regenerate = button("Regenerate", () => resend());
    regenerate.className = "regenerate";
    actions.append(copy, regenerate);
    el.append(actions);
  }
  message.el = el;
  message.body = body;
  state.messages.push(message);
  ui.empty.hidden = true;
  ui.messages.append(el);
  paint(message);
  scrollToEnd(true);
  return message;
}

function paint(message) {
  if (message.role === "assistant") {
    const streaming = message.status === "streaming";
    const calls = (message.toolCalls ?? []).filter(Boolean);
    const shown = [];
    if (message.reasoning || message.redacted) shown.push(reasoningBlock(message, streaming));
    shown.push(render(message.content));
    for (const call of calls) shown.push(toolCallBlock(call));
    message.body.replaceChildren(...shown);
    if (!message.content && !message.reasoning && !calls.length && streaming) {
      message.body.append(dots());
    }
  } else {
    message.body.textContent = message.content;
    for (const result of message.toolResults ?? []) message.body.append(toolResultBlock(result));
  }
  message.el.dataset.status = message.status ?? "complete";
  message.el.setAttribute("aria-busy", String(message.status === "streaming"));
}

/**
 * The model's reasoning, collapsed: "Thinking…" while it streams, expandable to read it. The
 * reader's open or closed choice survives the repaints.
 */
function reasoningBlock(message, streaming) {
  const details = document.createElement("details");
  details.className = "reasoning";
  details.open = message.reasoningOpen ?? false;
  details.addEventListener("toggle", () => (message.reasoningOpen = details.open));
  const summary = document.createElement("summary");
  const thinking = streaming && !message.content && !(message.toolCalls ?? []).some(Boolean);
  summary.textContent = thinking ? "Thinking…" : "Thought";
  const text = document.createElement("div");
  text.className = "reasoning-text";
  // Encrypted by the provider: there is nothing to read, only that it thought.
  text.textContent = message.reasoning || "(the provider keeps this reasoning hidden)";
  details.append(summary, text);
  return details;
}

/** A tool call as what it is: the function's name and its arguments, never reply text. */
function toolCallBlock(call) {
  const block = document.createElement("div");
  block.className = "tool-call";
  block.dataset.done = String(Boolean(call.done));
  const name = document.createElement("span");
  name.className = "tool-name";
  name.textContent = call.name;
  const args = document.createElement("pre");
  args.className = "tool-arguments";
  args.textContent = prettyJSON(call.arguments, call.done);
  block.append(name, args);
  return block;
}

function toolResultBlock(result) {
  const block = document.createElement("div");
  block.className = "tool-result";
  const label = document.createElement("span");
  label.className = "tool-name";
  label.textContent = `result of ${result.tool_call_id}`;
  const content = document.createElement("pre");
  content.className = "tool-arguments";
  content.textContent = result.content;
  block.append(label, content);
  return block;
}

/** Whole JSON indented; fragments still streaming as they came (they are not JSON yet). */
function prettyJSON(text, done) {
  if (!done) return text;
  try {
    return JSON.stringify(JSON.parse(text || "{}"), null, 2);
  } catch {
    return text;
  }
}

function dots() {
  const span = document.createElement("span");
  span.className = "typing";
  span.setAttribute("aria-hidden", "true");
  return span;
}

function updateActions() {
  const lastAssistant = state.messages.findLast((m) => m.role === "assistant");
  for (const message of state.messages) {
    if (message.role !== "assistant") continue;
    const streaming = message.status === "streaming";
    message.el.querySelector(".copy").hidden = streaming || !message.content;
    message.el.querySelector(".regenerate").hidden =
      streaming || message !== lastAssistant || state.live !== null;
  }
}

function scrollToEnd(force = false) {
  const el = ui.messages;
  const near = el.scrollHeight - el.scrollTop - el.clientHeight < 120;
  if (force || near) el.scrollTop = el.scrollHeight;
}

async function copyText(message, control) {
  try {
    await navigator.clipboard.writeText(message.content);
  } catch {
    const area = document.createElement("textarea");
    area.value = message.content;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  control.textContent = "Copied";
  setTimeout(() => (control.textContent = "Copy"), 1500);
}

function button(label, onClick) {
  const el = document.createElement("button");
  el.type = "button";
  el.textContent = label;
  el.addEventListener("click", onClick);
  return el;
}

// ---- sending and following a reply -------------------------------------------------------

async function send(content) {
  if (state.live || !content.trim()) return;
  clearError();
  const model = ui.model.value || undefined;
  save(localStorage, STORE.model, model ?? null);
  addMessage({ role: "user", content, status: "complete" });
  const reply = addMessage({ role: "assistant", content: "", status: "streaming" });
  setStreaming(true);
  setStatus("thinking…");
  if (state.mode === "memory") {
    const messages = state.messages
      .filter((m) => m !== reply && m.content && m.status !== "error")
      .map((m) => ({ role: m.role, content: m.content }));
    saveMemory();
    follow(reply, { url: "v1/streams", body: { model, messages } });
    return;
  }
  try {
    if (!state.conversationId) {
      const conversation = await json("v1/conversations", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ model }),
      });
      state.conversationId = conversation.id;
      save(sessionStorage, STORE.conversation, conversation.id);
      state.conversations.unshift(conversation);
      renderList();
    }
  } catch (exc) {
    failBeforeStart(reply, exc);
    return;
  }
  const id = encodeURIComponent(state.conversationId);
  follow(reply, { url: `v1/conversations/${id}/messages`, body: { content, model } });
}

function failBeforeStart(message, exc) {
  message.status = "error";
  paint(message);
  setStreaming(false);
  if (exc instanceof Unauthorized) {
    askForKey();
    exc = Object.assign(new Error("no valid API key"), { code: "unauthorized" });
  }
  showError(exc, resend);
}

function follow(message, { url, body, resume }) {
  const live = { message, firstToken: 0, tokens: 0, frame: 0, usage: null, reply: null };
  state.live = live;
  message.status = "streaming";
  setStreaming(true);
  setStatus(resume ? "re-attaching to the reply…" : "thinking…");
  live.reply = streamChat({
    url: url ?? "v1/streams",
    body,
    resume,
    headers: authHeaders(),
    onEvent: (event) => onEvent(live, event),
  });
  live.reply.done.then((result) => finished(live, result)).catch(reportUnexpected);
}

function onEvent(live, event) {
  if (state.live !== live) return;
  switch (event.type) {
    case "stream":
      live.message.streamId = event.stream_id;
      saveMemory();
      remember(live);
      break;
    case "queued":
      setStatus(`queued, #${event.position}`);
      break;
    case "token":
      if (!live.firstToken) live.firstToken = performance.now();
      live.tokens += 1;
      schedulePaint(live);
      break;
    case "reasoning":
    case "tool_call":
      schedulePaint(live);
      break;
    case "usage":
      live.usage = event;
      break;
    case "reconnecting":
      setStatus(`connection lost, reconnecting (try ${event.attempt})…`);
      break;
    case "reconnected":
      setStatus(live.firstToken ? rate(live) : "thinking…");
      break;
    default:
  }
}

/** One repaint per frame however many tokens arrived, so a fast stream stays smooth. */
function schedulePaint(live) {
  if (live.frame) return;
  live.frame = requestAnimationFrame(() => {
    live.frame = 0;
    if (state.live !== live) return;
    takeReply(live.message, live.reply);
    paint(live.message);
    scrollToEnd();
    remember(live);
    setStatus(rate(live));
  });
}

function takeReply(message, reply) {
  message.content = reply.text;
  message.reasoning = reply.reasoning;
  message.redacted = reply.redacted.length > 0;
  message.toolCalls = reply.toolCalls.filter(Boolean).map((call) => ({ ...call }));
}

function remember(live) {
  const { streamId, lastEventId, text, reasoning, signature, redacted, toolCalls } = live.reply;
  if (!streamId) return;
  const calls = toolCalls.filter(Boolean);
  save(sessionStorage, STORE.live, {
    streamId,
    lastEventId,
    text,
    reasoning,
    signature,
    redacted,
    toolCalls: calls,
  });
}

function rate(live) {
  const seconds = (performance.now() - live.firstToken) / 1000;
  if (seconds < 0.25) return "streaming…";
  return `streaming · ${(live.tokens / seconds).toFixed(1)} tokens/s`;
}

function finished(live, result) {
  cancelAnimationFrame(live.frame);
  if (state.live !== live) return;
  state.live = null;
  save(sessionStorage, STORE.live, null);
  const message = live.message;
  takeReply(message, result);
  message.status = result.status === "aborted" ? "streaming" : result.status;
  paint(message);
  scrollToEnd();
  saveMemory();
  setStreaming(false);
  if (result.status === "complete") {
    const seconds = live.firstToken ? (performance.now() - live.firstToken) / 1000 : 0;
    const tokens = result.usage?.completion_tokens ?? live.tokens;
    const speed = seconds > 0.05 ? ` · ${(tokens / seconds).toFixed(1)} tokens/s` : "";
    const cut = result.finishReason === "length" ? " · stopped at the length limit" : "";
    setStatus(`${tokens} tokens${speed}${cut}`);
  } else if (result.status === "cancelled") {
    setStatus("Stopped.");
  } else if (result.status === "error") {
    if (result.error?.code === "unauthorized") askForKey();
    showError(result.error, resend);
  }
  if (state.mode === "conversations") loadConversations().catch(() => {});
}

function leaveLiveReply() {
  const live = state.live;
  if (!live) return;
  // The generation goes on (and is stored); reopening the conversation re-attaches to it.
  state.live = null;
  live.reply.abort();
  save(sessionStorage, STORE.live, null);
  setStreaming(false);
}

async function stop() {
  const live = state.live;
  if (!live) return;
  setStatus("Stopping…");
  await live.reply.cancel();
}

/** Regenerate and Retry: ask the last question again, in place of its answer. */
function resend() {
  if (state.live) return;
  const index = state.messages.findLastIndex((m) => m.role === "user");
  if (index === -1) return;
  const { content } = state.messages[index];
  for (const message of state.messages.splice(index)) message.el.remove();
  send(content);
}

// ---- status ------------------------------------------------------------------------------

function setStatus(text) {
  ui.status.classList.remove("error");
  ui.status.textContent = text;
}

function clearError() {
  if (ui.status.classList.contains("error")) setStatus("");
}

function showError(error, retry) {
  const code = error?.code ?? "network_error";
  const human = HUMAN_ERRORS[code] ?? "Something went wrong.";
  const wait = error?.retryAfter ? ` Try again in ${Math.ceil(error.retryAfter)} s.` : "";
  const text = document.createElement("span");
  text.textContent = `${human}${wait}`;
  const detail = document.createElement("small");
  detail.className = "detail";
  detail.textContent = error?.message ?? "";
  ui.status.replaceChildren(text, " ", detail, " ", button("Retry", () => retry()));
  ui.status.classList.add("error");
  updateActions();
}

function setStreaming(on) {
  ui.stop.hidden = !on;
  ui.send.hidden = on;
  ui.model.disabled = on;
  updateActions();
}

function reportUnexpected(exc) {
  if (exc instanceof Unauthorized) {
    askForKey();
    return;
  }
  showError(exc, connect);
}

/** (Re)connect: what a message sent meanwhile waits for (the composer's submit). */
function connect() {
  state.starting = start().catch(reportUnexpected);
}

function selectModel(name) {
  if ([...ui.model.options].some((option) => option.value === name)) ui.model.value = name;
}

// ---- layout and keyboard -----------------------------------------------------------------

function closeSidebar() {
  ui.sidebar.classList.remove("open");
  ui.menu.setAttribute("aria-expanded", "false");
}

function bind() {
  ui.composer.addEventListener("submit", async (event) => {
    event.preventDefault();
    // Until the page has connected it knows neither where a message goes (a conversation or
    // the page's memory) nor whether its own "Connecting…" status is done: a message sent
    // before then stays in the box and leaves once it has.
    await state.starting;
    const content = ui.input.value;
    if (state.live || !content.trim()) return;
    ui.input.value = "";
    grow();
    send(content).catch(reportUnexpected);
  });
  ui.input.addEventListener("keydown", (event) => {
    // isComposing: Enter that confirms an IME candidate (Chinese, Japanese…) is not a send.
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      ui.composer.requestSubmit();
    } else if (event.key === "Escape" && state.live) {
      event.preventDefault();
      stop().catch(reportUnexpected);
    }
  });
  ui.input.addEventListener("input", grow);
  ui.stop.addEventListener("click", () => {
    stop().catch(reportUnexpected);
    ui.input.focus();
  });
  ui.newChat.addEventListener("click", newChat);
  ui.model.addEventListener("change", () => save(localStorage, STORE.model, ui.model.value));
  ui.menu.addEventListener("click", () => {
    const open = ui.sidebar.classList.toggle("open");
    ui.menu.setAttribute("aria-expanded", String(open));
    if (open) ui.newChat.focus();
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && ui.sidebar.classList.contains("open")) {
      closeSidebar();
      ui.menu.focus();
    }
  });
  ui.keyForm.addEventListener("submit", () => {
    save(localStorage, STORE.key, ui.keyInput.value.trim());
    connect();
  });
}

function grow() {
  ui.input.style.height = "auto";
  ui.input.style.height = `${ui.input.scrollHeight}px`;
}

takeKeyFromAddress();
bind();
connect();

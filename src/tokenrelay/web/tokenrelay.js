// tokenrelay.js: a dependency-free client for tokenrelay's native SSE wire and its WebSocket.
//
// One ES module for browsers and Node 18+ (types in tokenrelay.d.ts, a React hook in
// docs/react.md). Both transports yield the same events: the native wire's own (`stream`,
// `queued`, `token`, `reasoning`, `tool_call`, `usage`, `done`, `error`, each with its `id`)
// plus `reconnecting` and `reconnected` while the client resumes a dropped connection from the
// last id it saw. A `tool_call` event carries the call's own id as `call_id` on both (the SSE
// wire sends it as `id`, which here is always the event's).

const TERMINAL = new Set(["done", "error"]);
const DEFAULT_RETRY = { retries: 8, baseDelay: 250, maxDelay: 8000 };
// Three of the server's default 15 s pings: quiet for longer than that, the link is dead.
const DEFAULT_STALL_TIMEOUT = 45000;

/**
 * An incremental Server-Sent Events parser (WHATWG HTML, "Parsing an event stream").
 *
 * Feed it bytes as they come: partial lines and partial UTF-8 sequences are kept across
 * calls, so a read may end anywhere, even inside a character.
 */
export class SSEParser {
  #decoder = new TextDecoder("utf-8"); // ignoreBOM false: a single leading BOM is dropped.
  #line = "";
  #skipLF = false;
  #data = "";
  #event = "";
  #lastEventId = "";

  constructor({ onEvent, onComment, onRetry } = {}) {
    this.onEvent = onEvent ?? (() => {});
    this.onComment = onComment;
    this.onRetry = onRetry;
  }

  /** The last event ID seen so far (it persists across events, as the spec says). */
  get lastEventId() {
    return this.#lastEventId;
  }

  feed(chunk) {
    this.#lines(typeof chunk === "string" ? chunk : this.#decoder.decode(chunk, { stream: true }));
  }

  /** The stream has ended: an incomplete line or event is discarded, as the spec says. */
  end() {
    this.#lines(this.#decoder.decode());
    this.#line = "";
    this.#data = "";
    this.#event = "";
    this.#skipLF = false;
  }

  #lines(text) {
    if (!text) return;
    let start = 0;
    // A CR that ended the previous read may be the first half of a CRLF.
    if (this.#skipLF) {
      if (text.charCodeAt(0) === 10) start = 1;
      this.#skipLF = false;
    }
    const eol = /\r\n|\r|\n/g;
    eol.lastIndex = start;
    let match;
    while ((match = eol.exec(text)) !== null) {
      const line = this.#line + text.slice(start, match.index);
      this.#line = "";
      start = match.index + match[0].length;
      if (match[0] === "\r" && start === text.length) this.#skipLF = true;
      this.#field(line);
    }
    this.#line += text.slice(start);
  }

  #field(line) {
    if (line === "") {
      this.#dispatch();
      return;
    }
    if (line.charCodeAt(0) === 58) {
      this.onComment?.(line.slice(1));
      return;
    }
    const colon = line.indexOf(":");
    const name = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.charCodeAt(0) === 32) value = value.slice(1);
    switch (name) {
      case "event":
        this.#event = value;
        break;
      case "data":
        this.#data += value + "\n";
        break;
      case "id":
        if (!value.includes("\0")) this.#lastEventId = value;
        break;
      case "retry":
        if (/^[0-9]+$/.test(value)) this.onRetry?.(Number(value));
        break;
      default:
      // Unknown fields are ignored.
    }
  }

  #dispatch() {
    if (this.#data === "") {
      this.#event = "";
      return;
    }
    const event = {
      type: this.#event || "message",
      data: this.#data.slice(0, -1),
      lastEventId: this.#lastEventId,
    };
    this.#data = "";
    this.#event = "";
    this.onEvent(event);
  }
}

/** An error the client library reports (also the `error` event's shape). */
export class TokenRelayError extends Error {
  constructor(code, message, { status, retryAfter } = {}) {
    super(message);
    this.name = "TokenRelayError";
    this.code = code;
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

/**
 * One reply as events: iterate it (`for await`), or pass `onEvent`, or await `done`.
 * The base of both transports; it keeps the text, the ids, and the end.
 */
export class Reply {
  streamId = null;
  model = null;
  lastEventId = 0;
  text = "";
  reasoning = "";
  signature = null;
  redacted = [];
  toolCalls = [];
  finishReason = null;
  usage = null;
  error = null;
  status = "connecting";
  #queue = [];
  #wake = null;
  #iterated = false;
  #finish;
  #started;

  constructor({ onEvent, resume } = {}) {
    this.onEvent = onEvent;
    if (resume) {
      this.streamId = resume.streamId;
      this.lastEventId = Number(resume.lastEventId ?? 0);
      this.text = resume.text ?? "";
      this.reasoning = resume.reasoning ?? "";
      this.signature = resume.signature ?? null;
      this.redacted = [...(resume.redacted ?? [])];
      for (const call of resume.toolCalls ?? []) this.toolCalls[call.index] = { ...call };
    }
    /** Resolves with the reply's result when the reply has ended (it never rejects). */
    this.done = new Promise((resolve) => (this.#finish = resolve));
    this.started = new Promise((resolve) => (this.#started = resolve));
    if (this.streamId) this.#started(this.streamId);
  }

  get finished() {
    return this.status !== "connecting" && this.status !== "streaming";
  }

  /** Take one event from the wire; false when it was a replay of one already seen. */
  accept(event) {
    if (this.finished) return false;
    if (typeof event.id === "number" && event.id > 0) {
      // A resumed connection starts after lastEventId; anything older was seen already.
      if (event.id <= this.lastEventId) return false;
      this.lastEventId = event.id;
    }
    switch (event.type) {
      case "stream":
        this.model = event.model;
        this.named(event.stream_id);
        break;
      case "token":
        this.text += event.text;
        break;
      case "reasoning":
        if (event.text !== undefined) this.reasoning += event.text;
        if (event.signature !== undefined) this.signature = event.signature;
        if (event.redacted !== undefined) this.redacted.push(event.redacted);
        break;
      case "tool_call":
        this.#toolCall(event);
        break;
      case "usage":
        this.usage = {
          prompt_tokens: event.prompt_tokens,
          completion_tokens: event.completion_tokens,
        };
        break;
      case "done":
        this.finishReason = event.finish_reason;
        break;
      case "error":
        this.error = new TokenRelayError(event.code, event.message, event);
        break;
      default:
    }
    this.status = "streaming";
    this.emit(event);
    if (event.type === "done") this.end("complete");
    else if (event.type === "error") this.end(event.code === "cancelled" ? "cancelled" : "error");
    return true;
  }

  /** A call starts (`name`), grows (`arguments`, a fragment of JSON text) or ends (`done`). */
  #toolCall(event) {
    if (event.name !== undefined) {
      this.toolCalls[event.index] = {
        index: event.index,
        id: event.call_id,
        name: event.name,
        arguments: "",
        done: false,
      };
    }
    const call = this.toolCalls[event.index];
    if (!call) return;
    if (event.arguments !== undefined) call.arguments += event.arguments;
    if (event.done) call.done = true;
  }

  /** The server has named the stream (a header or the first event). */
  named(streamId) {
    if (!streamId) return;
    this.streamId = streamId;
    this.#started(streamId);
  }

  /** End with an error the client saw itself (the network, an HTTP status). */
  fail(code, message, extra = {}) {
    if (this.finished) return;
    this.error = new TokenRelayError(code, message, extra);
    this.status = "streaming";
    this.emit({ type: "error", code, message, ...extra });
    this.end(code === "cancelled" ? "cancelled" : "error");
  }

  emit(event) {
    this.#queue.push(event);
    this.#wake?.();
    try {
      this.onEvent?.(event, this);
    } catch (exc) {
      // A broken handler must not break the stream; report it where it can be seen.
      queueMicrotask(() => {
        throw exc;
      });
    }
  }

  end(status) {
    if (this.finished) return;
    this.status = status;
    this.#started(this.streamId);
    this.#wake?.();
    this.#finish(this.result());
  }

  result() {
    return {
      status: this.status,
      text: this.text,
      reasoning: this.reasoning,
      signature: this.signature,
      redacted: [...this.redacted],
      toolCalls: this.toolCalls.filter(Boolean).map((call) => ({ ...call })),
      streamId: this.streamId,
      model: this.model,
      lastEventId: this.lastEventId,
      finishReason: this.finishReason,
      usage: this.usage,
      error: this.error,
    };
  }

  async *[Symbol.asyncIterator]() {
    if (this.#iterated) throw new Error("a reply can be iterated once");
    this.#iterated = true;
    while (true) {
      if (this.#queue.length) {
        yield this.#queue.shift();
        continue;
      }
      if (this.finished) return;
      await new Promise((resolve) => (this.#wake = resolve));
      this.#wake = null;
    }
  }

  /** Wait for the stream id (null if the reply ended before the server named one). */
  whenStarted() {
    return this.started;
  }
}

/**
 * Start (or re-attach to) a reply on the native SSE wire and follow it to its end,
 * resuming from `Last-Event-ID` with backoff when the connection drops.
 */
export function streamChat(options) {
  return new ChatStream(options);
}

export class ChatStream extends Reply {
  #options;
  #signal;
  #connection = null;
  #stopLocally = false;
  #baseDelay;

  constructor(options) {
    super({ onEvent: options.onEvent, resume: options.resume });
    this.#options = options;
    this.#signal = options.signal;
    this.#baseDelay = options.retry?.baseDelay ?? DEFAULT_RETRY.baseDelay;
    this.#run();
  }

  /**
   * Stop the generation on the server (`DELETE /v1/streams/{sid}`); the reply then ends with
   * an `error` event whose code is `cancelled`. Resolves with the server's answer.
   */
  async cancel() {
    if (this.finished) return null;
    const streamId = await this.whenStarted();
    if (this.finished) return null;
    if (!streamId) return null;
    try {
      const response = await this.#fetch(this.streamUrl(streamId), {
        method: "DELETE",
        headers: this.#options.headers ?? {},
      });
      if (!response.ok) throw await httpError(response);
      return await response.json();
    } catch (exc) {
      // The server could not be told: at least stop here.
      this.#stopLocally = true;
      this.#connection?.abort();
      this.fail("cancelled", `stopped here; the server could not be reached (${describe(exc)})`);
      return null;
    }
  }

  /** Stop reading without stopping the generation (it can be re-attached to). */
  abort() {
    this.#stopLocally = true;
    this.#connection?.abort();
    this.end("aborted");
  }

  streamUrl(streamId) {
    const base = this.#options.baseUrl ?? apiBase(this.#options.url);
    return new URL(`v1/streams/${encodeURIComponent(streamId)}`, base).href;
  }

  #fetch(url, init) {
    const fetchImpl = this.#options.fetch ?? globalThis.fetch.bind(globalThis);
    return fetchImpl(url, init);
  }

  async #run() {
    const onAbort = () => this.abort();
    if (this.#signal?.aborted) {
      this.end("aborted");
      return;
    }
    this.#signal?.addEventListener("abort", onAbort, { once: true });
    try {
      await this.#follow();
    } catch (exc) {
      this.fail("client_error", describe(exc));
    } finally {
      this.#signal?.removeEventListener("abort", onAbort);
    }
  }

  async #follow() {
    const retry = { ...DEFAULT_RETRY, ...this.#options.retry };
    let attempt = 0;
    let resuming = this.streamId !== null;
    while (!this.finished) {
      const before = this.lastEventId;
      let problem;
      try {
        problem = await this.#connect(resuming);
      } catch (exc) {
        if (this.#stopLocally || this.finished) return;
        problem = { retryable: true, message: describe(exc) };
      }
      if (this.finished || this.#stopLocally) return;
      // Without a stream id nothing says the server started a generation, and a second POST
      // could start another: that retry is the caller's to decide (`retryable` says if it may).
      if (!problem.retryable || !this.streamId) {
        this.fail(problem.code ?? "network_error", problem.message, {
          retryable: problem.retryable,
          ...problem.extra,
        });
        return;
      }
      if (this.lastEventId > before) attempt = 0;
      attempt += 1;
      if (attempt > retry.retries) {
        this.fail("network_error", `the connection dropped and ${retry.retries} retries failed`, {
          retryable: true,
        });
        return;
      }
      const delay = backoff(attempt, { ...retry, baseDelay: this.#baseDelay }, problem.retryAfter);
      this.emit({ type: "reconnecting", attempt, delay, reason: problem.message });
      await sleep(delay, this.#signal);
      resuming = true;
    }
  }

  /** One connection: open, read until it ends; what went wrong, if anything, is returned. */
  async #connect(resuming) {
    const options = this.#options;
    const controller = new AbortController();
    this.#connection = controller;
    const headers = { Accept: "text/event-stream", ...options.headers };
    let request;
    if (resuming) {
      headers["Last-Event-ID"] = String(this.lastEventId);
      request = { method: "GET", headers, signal: controller.signal };
    } else {
      headers["Content-Type"] = "application/json";
      request = {
        method: "POST",
        headers,
        body: JSON.stringify(options.body ?? {}),
        signal: controller.signal,
      };
    }
    const url = resuming ? this.streamUrl(this.streamId) : new URL(options.url, pageUrl()).href;
    const stall = options.stallTimeout ?? DEFAULT_STALL_TIMEOUT;
    const stalled = () =>
      controller.abort(new TokenRelayError("stalled", `no data for ${stall} ms`));
    let timer = setTimeout(stalled, stall);
    try {
      const response = await this.#fetch(url, request);
      if (!response.ok) {
        const error = await httpError(response);
        const retryable = response.status >= 500 || response.status === 429;
        const message =
          response.status === 404 && resuming
            ? "the stream is no longer available on the server"
            : error.message;
        return {
          retryable,
          code: error.code,
          message,
          retryAfter: error.retryAfter,
          extra: { status: response.status, retryAfter: error.retryAfter },
        };
      }
      if (!this.streamId) this.named(response.headers.get("x-stream-id"));
      if (resuming) {
        this.emit({ type: "reconnected", lastEventId: this.lastEventId });
      }
      const parser = new SSEParser({
        onEvent: (frame) => this.#frame(frame),
        onRetry: (ms) => (this.#baseDelay = ms),
      });
      const reader = response.body.getReader();
      try {
        while (!this.finished) {
          const { value, done } = await reader.read();
          clearTimeout(timer);
          timer = setTimeout(stalled, stall);
          if (done) break;
          parser.feed(value);
        }
      } finally {
        // Leaving early (the reply ended, or a cancel): close the connection now.
        reader.cancel().catch(() => {});
      }
      parser.end();
      if (this.finished) return null;
      return { retryable: true, message: "the connection closed before the reply ended" };
    } finally {
      clearTimeout(timer);
      this.#connection = null;
    }
  }

  #frame(frame) {
    let data;
    try {
      data = JSON.parse(frame.data);
    } catch {
      return;
    }
    const id = Number(frame.lastEventId);
    if (frame.type === "tool_call" && "id" in data) {
      // The call's id; `id` is the event's, as on the WebSocket.
      data.call_id = data.id;
      delete data.id;
    }
    this.accept({ ...data, type: frame.type, id: Number.isFinite(id) ? id : 0 });
  }
}

/**
 * A chat on one WebSocket (`/ws/chat`): `send()` a turn, get a {@link Reply} with the same
 * events as {@link streamChat}. A dropped socket is reopened with backoff and the reply
 * resumed from its last event id.
 */
export function connectChat(options) {
  return new ChatSocket(options);
}

export class ChatSocket {
  #options;
  #socket = null;
  #opening = null;
  #reply = null;
  #closed = false;
  #pendingCancel = false;

  constructor(options) {
    this.#options = options;
  }

  /** Send a user turn (`{content, model?, conversation_id?, max_tokens?, ...}`). */
  send(turn, { onEvent } = {}) {
    if (this.#reply && !this.#reply.finished) {
      throw new Error("a reply is still streaming; cancel it first");
    }
    const reply = new Reply({ onEvent });
    this.#reply = reply;
    this.#pendingCancel = false;
    this.#start(reply, { type: "message", ...turn });
    return reply;
  }

  /** Stop the current reply on the server; it ends with an `error` event, code `cancelled`. */
  cancel() {
    const reply = this.#reply;
    if (!reply || reply.finished) return;
    if (this.#socket?.readyState === 1 && reply.streamId) {
      this.#socket.send(JSON.stringify({ type: "cancel" }));
    } else {
      this.#pendingCancel = true;
    }
  }

  close() {
    this.#closed = true;
    this.#socket?.close(1000);
    this.#reply?.end("aborted");
  }

  async #start(reply, message) {
    try {
      const socket = await this.#open();
      socket.send(JSON.stringify(message));
    } catch (exc) {
      reply.fail("network_error", describe(exc), { retryable: true });
    }
  }

  #open() {
    if (this.#socket?.readyState === 1) return Promise.resolve(this.#socket);
    this.#opening ??= new Promise((resolve, reject) => {
      const Impl = this.#options.WebSocket ?? globalThis.WebSocket;
      const socket = new Impl(this.#options.url, this.#options.protocols);
      socket.onopen = () => {
        // Browsers cannot set headers on a WebSocket: the key goes in the first message.
        if (this.#options.token) {
          socket.send(JSON.stringify({ type: "auth", token: this.#options.token }));
        }
        this.#socket = socket;
        this.#opening = null;
        resolve(socket);
      };
      socket.onmessage = (message) => this.#message(message.data);
      socket.onclose = (close) => {
        if (this.#socket !== socket) {
          this.#opening = null;
          reject(new Error(`the WebSocket did not open (close code ${close.code})`));
          return;
        }
        this.#socket = null;
        this.#dropped(close);
      };
      socket.onerror = () => {};
    });
    return this.#opening;
  }

  #message(raw) {
    const reply = this.#reply;
    let data;
    try {
      data = JSON.parse(raw);
    } catch {
      return;
    }
    if (!reply || data.type === "pong") return;
    const { type, id, content, ...rest } = data;
    const event = { type, id: typeof id === "number" ? id : 0, ...rest };
    if (type === "token") event.text = content;
    reply.accept(event);
    if (type === "stream" && this.#pendingCancel) this.cancel();
  }

  async #dropped(close) {
    const reply = this.#reply;
    if (this.#closed || !reply || reply.finished) return;
    if (!reply.streamId) {
      reply.fail("network_error", `the WebSocket closed before the reply started (${close.code})`, {
        retryable: true,
      });
      return;
    }
    const retry = { ...DEFAULT_RETRY, ...this.#options.retry };
    for (let attempt = 1; attempt <= retry.retries; attempt++) {
      const delay = backoff(attempt, retry);
      reply.emit({ type: "reconnecting", attempt, delay, reason: `socket closed (${close.code})` });
      await sleep(delay);
      if (this.#closed || reply.finished) return;
      try {
        const socket = await this.#open();
        socket.send(
          JSON.stringify({
            type: "resume",
            stream_id: reply.streamId,
            last_event_id: reply.lastEventId,
          }),
        );
        reply.emit({ type: "reconnected", lastEventId: reply.lastEventId });
        if (this.#pendingCancel) this.cancel();
        return;
      } catch {
        // The next attempt waits longer.
      }
    }
    reply.fail("network_error", `the WebSocket dropped and ${retry.retries} retries failed`, {
      retryable: true,
    });
  }
}

/** Exponential backoff with "equal jitter": half the delay fixed, half random. */
export function backoff(attempt, { baseDelay, maxDelay }, retryAfterSeconds) {
  const ceiling = Math.min(maxDelay, baseDelay * 2 ** (attempt - 1));
  const delay = ceiling / 2 + Math.random() * (ceiling / 2);
  const floor = retryAfterSeconds ? retryAfterSeconds * 1000 : 0;
  return Math.round(Math.max(delay, floor));
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    if (signal?.aborted) {
      resolve();
      return;
    }
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}

async function httpError(response) {
  let code = `http_${response.status}`;
  let message = `HTTP ${response.status}`;
  try {
    const body = await response.json();
    code = body?.error?.code ?? code;
    message = body?.error?.message ?? message;
  } catch {
    // Not the gateway's JSON (a proxy's page): the status says enough.
  }
  const retryAfter = Number(response.headers.get("retry-after")) || undefined;
  return new TokenRelayError(code, message, { status: response.status, retryAfter });
}

function describe(exc) {
  const cause = exc?.cause?.message ?? exc?.cause?.code;
  return cause ? `${exc.message}: ${cause}` : String(exc?.message ?? exc);
}

function pageUrl() {
  return globalThis.location?.href;
}

/** The URL the API lives under: everything before `/v1/` in the stream's URL. */
function apiBase(url) {
  const absolute = new URL(url, pageUrl());
  const at = absolute.pathname.lastIndexOf("/v1/");
  absolute.pathname = at === -1 ? "/" : absolute.pathname.slice(0, at + 1);
  absolute.search = "";
  absolute.hash = "";
  return absolute.href;
}

// Types for tokenrelay.js, the client for tokenrelay's native SSE wire and WebSocket.
//
//     import { streamChat } from "/static/tokenrelay.js";
//
//     const reply = streamChat({
//       url: "/v1/streams",
//       body: { model: "demo", messages: [{ role: "user", content: "Hello" }] },
//       headers: { Authorization: `Bearer ${key}` },
//     });
//     for await (const event of reply) {
//       if (event.type === "token") output.append(event.text);
//       if (event.type === "reasoning" && event.text) thoughts.append(event.text);
//     }
//     const { status, text, reasoning, toolCalls, error } = await reply.done;
//
// A dropped connection is resumed with `GET /v1/streams/{sid}` and `Last-Event-ID`, with
// exponential backoff; events already seen are never delivered twice, none is skipped.

/** The native wire's events; `id` is the event's place in the stream (1, 2, 3…). */
export type StreamEvent =
  | { type: "stream"; id: number; stream_id: string; model: string }
  | { type: "queued"; id: number; position: number }
  | { type: "token"; id: number; text: string }
  | ReasoningEvent
  | ToolCallEvent
  | {
      type: "usage";
      id: number;
      prompt_tokens: number;
      completion_tokens: number;
      cached_tokens?: number;
      cache_creation_tokens?: number;
      reasoning_tokens?: number;
    }
  | { type: "done"; id: number; finish_reason: string }
  | ErrorEvent;

/**
 * The model thinking aloud: text deltas, then (where the provider gives one) its signature;
 * or reasoning the provider encrypted (Anthropic's redacted thinking), opaque data to send back.
 */
export type ReasoningEvent =
  | { type: "reasoning"; id: number; text: string; signature?: undefined; redacted?: undefined }
  | { type: "reasoning"; id: number; signature: string; text?: undefined; redacted?: undefined }
  | { type: "reasoning"; id: number; redacted: string; text?: undefined; signature?: undefined };

/**
 * A tool call, by `index` (0, 1… within the reply; several may be open at once): it starts
 * with its `call_id` and `name`, grows by `arguments` fragments (JSON text only whole once
 * joined), and ends with `done`. The server's SSE field `id` is given here as `call_id`.
 */
export type ToolCallEvent =
  | { type: "tool_call"; id: number; index: number; call_id: string; name: string }
  | { type: "tool_call"; id: number; index: number; arguments: string }
  | { type: "tool_call"; id: number; index: number; done: true };

/** A call as the reply has it so far. */
export interface ToolCall {
  index: number;
  /** The call's id, to answer it with a tool result. */
  id: string;
  name: string;
  /** JSON text; `""` until the first fragment (a call that ends so took no arguments). */
  arguments: string;
  done: boolean;
}

/**
 * The last event of a failed reply: from the server (`id` > 0, a code from the gateway's
 * error table, e.g. `upstream_timeout`, `cancelled`) or from the client (`id` absent or 0:
 * `network_error`, `unauthorized`, `rate_limited`… with the HTTP `status` when there was one).
 */
export interface ErrorEvent {
  type: "error";
  id?: number;
  code: string;
  message: string;
  /** HTTP status, when the error was an HTTP answer before the stream started. */
  status?: number;
  /** Seconds, from a `Retry-After` header. */
  retryAfter?: number;
  /** Whether sending the same request again may work (client-side errors only). */
  retryable?: boolean;
}

/** The client's own events while it resumes a dropped connection. */
export type ClientEvent =
  | { type: "reconnecting"; attempt: number; delay: number; reason: string }
  | { type: "reconnected"; lastEventId: number };

export type ChatEvent = StreamEvent | ClientEvent;

export type ReplyStatus =
  | "connecting"
  | "streaming"
  | "complete"
  | "cancelled"
  | "error"
  | "aborted";

export interface ChatResult {
  /** `complete` (done), `cancelled` (stopped on the server), `error`, or `aborted` (locally). */
  status: Exclude<ReplyStatus, "connecting" | "streaming">;
  /** The whole reply text, including text from before a resume. */
  text: string;
  /** The reasoning streamed before (or between) the text, and its signature if any. */
  reasoning: string;
  signature: string | null;
  /** Encrypted reasoning blocks, in order: nothing to show, data to carry back. */
  redacted: string[];
  /** The tool calls, in index order. */
  toolCalls: ToolCall[];
  streamId: string | null;
  model: string | null;
  lastEventId: number;
  finishReason: string | null;
  usage: { prompt_tokens: number; completion_tokens: number } | null;
  error: TokenRelayError | null;
}

export interface RetryOptions {
  /** Reconnection attempts in a row without progress before giving up (default 8). */
  retries?: number;
  /** The first delay in ms (default 250; a server `retry:` field overrides it). */
  baseDelay?: number;
  /** The longest delay in ms (default 8000). */
  maxDelay?: number;
}

export interface StreamChatOptions {
  /**
   * Where to POST: `/v1/streams`, or `/v1/conversations/{id}/messages`. Relative URLs are
   * resolved against the page. Ignored when `resume` is given.
   */
  url: string;
  /** The JSON body (`{model, messages, max_tokens…}` or `{content, model…}`). */
  body?: unknown;
  /** Sent on every request, e.g. `{Authorization: "Bearer sk-…"}`. */
  headers?: Record<string, string>;
  /** Aborting stops reading (the reply ends `aborted`); the generation goes on for a resume. */
  signal?: AbortSignal;
  /** Called with every event, in order, before iterators see it. */
  onEvent?: (event: ChatEvent, reply: Reply) => void;
  /** Re-attach to a live stream instead of starting one (e.g. after a page reload). */
  resume?: {
    streamId: string;
    lastEventId?: number;
    text?: string;
    reasoning?: string;
    signature?: string | null;
    redacted?: string[];
    toolCalls?: ToolCall[];
  };
  /** Where `v1/streams/{sid}` lives; by default the part of `url` before `/v1/`. */
  baseUrl?: string;
  retry?: RetryOptions;
  /** A connection quiet for this long (ms) is treated as dropped (default 45000). */
  stallTimeout?: number;
  fetch?: typeof fetch;
}

/**
 * One reply. Iterate it once, or use `onEvent`; `done` resolves at the end (never rejects).
 * Events are kept from the start until an iterator takes them, so iterating late misses
 * nothing (and a reply only ever followed through `onEvent` holds its events until it ends).
 */
export declare class Reply implements AsyncIterable<ChatEvent> {
  readonly streamId: string | null;
  readonly model: string | null;
  readonly lastEventId: number;
  readonly text: string;
  readonly reasoning: string;
  readonly signature: string | null;
  readonly redacted: string[];
  /** Indexed by the call's `index`. */
  readonly toolCalls: ToolCall[];
  readonly finishReason: string | null;
  readonly usage: ChatResult["usage"];
  readonly error: TokenRelayError | null;
  readonly status: ReplyStatus;
  readonly finished: boolean;
  readonly done: Promise<ChatResult>;
  /** Resolves with the stream id once the server has named it (null if it never did). */
  whenStarted(): Promise<string | null>;
  [Symbol.asyncIterator](): AsyncIterator<ChatEvent>;
}

export declare class ChatStream extends Reply {
  /**
   * Stop the generation on the server (`DELETE /v1/streams/{sid}`); the reply then ends
   * `cancelled`. Waits for the stream id if the server has not named it yet.
   */
  cancel(): Promise<{ stream_id: string; cancelled: boolean; status: string } | null>;
  /** Stop reading here; the generation goes on and can be re-attached to. */
  abort(): void;
  /** `GET`/`DELETE` URL of a stream. */
  streamUrl(streamId: string): string;
}

export declare function streamChat(options: StreamChatOptions): ChatStream;

export interface ConnectChatOptions {
  /** `ws://host/ws/chat` (add `?conversation_id=` to store the turns). */
  url: string;
  /** An API key or JWT, sent as the first `{"type": "auth"}` message of every connection. */
  token?: string;
  protocols?: string | string[];
  retry?: RetryOptions;
  /** A WebSocket constructor, for runtimes without a global one. */
  WebSocket?: typeof WebSocket;
}

export interface Turn {
  content: string;
  model?: string;
  conversation_id?: string;
  max_tokens?: number;
  temperature?: number;
  /** Drives the `scripted` provider (tests and demos). */
  script?: Record<string, unknown>;
}

/** A chat over `WS /ws/chat`: one reply at a time, the same events as `streamChat`. */
export declare class ChatSocket {
  send(turn: Turn, options?: { onEvent?: (event: ChatEvent, reply: Reply) => void }): Reply;
  /** Stop the current reply on the server; it ends `cancelled`. */
  cancel(): void;
  close(): void;
}

export declare function connectChat(options: ConnectChatOptions): ChatSocket;

export interface SSEFrame {
  /** The `event:` field, `message` when there was none. */
  type: string;
  /** The `data:` lines joined with LF. */
  data: string;
  /** The last `id:` seen on the stream so far. */
  lastEventId: string;
}

/** An incremental, spec-exact Server-Sent Events parser. */
export declare class SSEParser {
  constructor(handlers?: {
    onEvent?: (frame: SSEFrame) => void;
    onComment?: (text: string) => void;
    onRetry?: (milliseconds: number) => void;
  });
  readonly lastEventId: string;
  /** Bytes (decoded as UTF-8, split characters kept) or already-decoded text. */
  feed(chunk: Uint8Array | string): void;
  /** End of stream: an incomplete event is discarded. */
  end(): void;
}

export declare class TokenRelayError extends Error {
  readonly code: string;
  readonly status?: number;
  readonly retryAfter?: number;
}

/** Delay (ms) before reconnection attempt `attempt` (1-based): equal-jitter exponential. */
export declare function backoff(
  attempt: number,
  retry: Required<Pick<RetryOptions, "baseDelay" | "maxDelay">>,
  retryAfterSeconds?: number,
): number;

// The SSE parser: a real gateway response split at every byte offset, and the spec's corners.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { SSEParser } from "../../src/tokenrelay/web/tokenrelay.js";
import { chatBody, startGateway } from "./gateway.mjs";

const REPLY = "Emoji 👋🏽 and 🇯🇵, CJK 世界 こんにちは, accents é ü, and a \"quoted\" line\nend.";

let gateway;
let captured;
before(async () => {
  gateway = await startGateway();
  const tokens = [...REPLY.matchAll(/\s*\S+/g)].map((m) => m[0]);
  const response = await fetch(`${gateway.url}/v1/streams`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    // A gap between tokens keeps them in separate frames (a reader behind gets them coalesced).
    body: JSON.stringify(chatBody({ tokens, delay: 0.01 })),
  });
  captured = new Uint8Array(await response.arrayBuffer());
});
after(async () => {
  await gateway?.close();
});

function parse(...chunks) {
  const frames = [];
  const comments = [];
  const retries = [];
  const parser = new SSEParser({
    onEvent: (frame) => frames.push(frame),
    onComment: (text) => comments.push(text),
    onRetry: (ms) => retries.push(ms),
  });
  for (const chunk of chunks) parser.feed(chunk);
  parser.end();
  return { frames, comments, retries };
}

function bytes(text) {
  return new TextEncoder().encode(text);
}

function withLineEnds(data, eol) {
  return bytes(new TextDecoder().decode(data).replaceAll("\n", eol));
}

test("the captured gateway stream parses to the reply, ids rising from 1", () => {
  const { frames } = parse(captured);
  assert.equal(frames[0].type, "stream");
  assert.equal(frames.at(-1).type, "done");
  const ids = frames.map((f) => Number(f.lastEventId));
  assert.equal(ids[0], 1);
  assert.ok(ids.every((id, i) => i === 0 || id > ids[i - 1]), `ids ${ids}`);
  const text = frames
    .filter((f) => f.type === "token")
    .map((f) => JSON.parse(f.data).text)
    .join("");
  assert.equal(text, REPLY);
  // Multi-byte characters are in the bytes, so some splits below land inside them.
  assert.ok(captured.some((b) => b >= 0xf0));
});

for (const [name, eol] of [
  ["LF", "\n"],
  ["CRLF", "\r\n"],
  ["CR", "\r"],
]) {
  test(`a ${name} stream split at every byte offset gives the same events`, () => {
    const data = withLineEnds(captured, eol);
    const whole = parse(data).frames;
    assert.ok(whole.length > 5);
    for (let at = 0; at <= data.length; at += 1) {
      const split = parse(data.subarray(0, at), data.subarray(at)).frames;
      assert.deepEqual(split, whole, `split at byte ${at} of ${data.length}`);
    }
  });
}

test("a stream fed one byte at a time gives the same events", () => {
  for (const eol of ["\n", "\r\n", "\r"]) {
    const data = withLineEnds(captured, eol);
    const chunks = Array.from(data, (b) => Uint8Array.of(b));
    assert.deepEqual(parse(...chunks).frames, parse(data).frames);
  }
});

test("a stream split at every pair of offsets gives the same events", () => {
  const data = withLineEnds(captured.subarray(0, 240), "\r\n");
  const whole = parse(data).frames;
  for (let a = 0; a <= data.length; a += 1) {
    for (let b = a; b <= data.length; b += 7) {
      const split = parse(data.subarray(0, a), data.subarray(a, b), data.subarray(b)).frames;
      assert.deepEqual(split, whole, `split at ${a} and ${b}`);
    }
  }
});

test("comments are not events; retry is reported; unknown fields are ignored", () => {
  const { frames, comments, retries } = parse(
    bytes(": ping\n\nretry: 1500\nretry: 1.5\nfoo: bar\ndata: x\n\n:\n\n"),
  );
  assert.deepEqual(comments, [" ping", ""]);
  assert.deepEqual(retries, [1500]);
  assert.deepEqual(frames, [{ type: "message", data: "x", lastEventId: "" }]);
});

test("data lines join with LF; one leading space is removed, not two", () => {
  const { frames } = parse(bytes("data: a\ndata:b\ndata:  c\ndata\ndata: \n\n"));
  assert.equal(frames[0].data, "a\nb\n c\n\n");
});

test("an event without data is not dispatched, but its id is kept", () => {
  const { frames } = parse(bytes("event: x\nid: 7\n\ndata: y\n\nid\ndata: z\n\n"));
  assert.deepEqual(frames, [
    { type: "message", data: "y", lastEventId: "7" },
    { type: "message", data: "z", lastEventId: "" },
  ]);
});

test("an id containing NUL is ignored", () => {
  const { frames } = parse(bytes("id: 3\n\nid: 4\u0000x\ndata: a\n\n"));
  assert.equal(frames[0].lastEventId, "3");
});

test("a leading BOM is dropped once, a later one is data", () => {
  const { frames } = parse(
    Uint8Array.of(0xef, 0xbb),
    Uint8Array.of(0xbf, ...bytes("data: a\n\ndata: \ufeffb\n\n")),
  );
  assert.deepEqual(
    frames.map((f) => f.data),
    ["a", "\ufeffb"],
  );
});

test("an event cut off by the end of the stream is discarded", () => {
  const { frames } = parse(bytes("data: complete\n\ndata: partial\n"));
  assert.deepEqual(
    frames.map((f) => f.data),
    ["complete"],
  );
});

test("a field name with no colon counts as a field with an empty value", () => {
  const { frames } = parse(bytes("event\ndata\n\n"));
  assert.deepEqual(frames, [{ type: "message", data: "", lastEventId: "" }]);
});

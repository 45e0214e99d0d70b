// Reasoning and tool calls through tokenrelay.js: typed events, the reply's state, resume.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { connectChat, streamChat } from "../../src/tokenrelay/web/tokenrelay.js";
import { chatBody, collect, startGateway, startProxy } from "./gateway.mjs";

const FAST_RETRY = { retries: 5, baseDelay: 20, maxDelay: 200 };
const skipWs = typeof WebSocket === "undefined" ? "run node with --experimental-websocket" : false;

const SCRIPT = {
  reasoning: "Two places, so two calls: one for the weather and one for the time.",
  signature: "sig-Zm9v==",
  redacted: ["RW5jcnlwdGVk"],
  text: "Checking both.",
  tool_calls: [
    { id: "call_w", name: "get_weather", arguments: { city: "Paris", unit: "C" }, fragment: 4 },
    { id: "call_t", name: "now" },
  ],
};
const CALLS = [
  {
    index: 0,
    id: "call_w",
    name: "get_weather",
    // As the scripted model writes an object's arguments (Python's json.dumps).
    arguments: '{"city": "Paris", "unit": "C"}',
    done: true,
  },
  { index: 1, id: "call_t", name: "now", arguments: "", done: true },
];

let gateway;
before(async () => {
  gateway = await startGateway();
});
after(async () => {
  await gateway?.close();
});

function assertRich(events, result, label = "") {
  assert.equal(result.status, "complete", `${label} ${result.error?.message}`);
  assert.equal(result.reasoning, SCRIPT.reasoning, label);
  assert.equal(result.signature, SCRIPT.signature, label);
  assert.deepEqual(result.redacted, SCRIPT.redacted, label);
  assert.equal(result.text, SCRIPT.text, label);
  assert.deepEqual(result.toolCalls, CALLS, label);
  assert.equal(result.finishReason, "tool_calls", label);
  const ids = events.filter((e) => e.id).map((e) => e.id);
  assert.equal(new Set(ids).size, ids.length, `${label} an event was delivered twice`);
  assert.deepEqual(ids, [...ids].sort((a, b) => a - b), `${label} ids out of order`);
  // The events alone rebuild the same reply: nothing only the library's state holds.
  const thought = events.filter((e) => e.type === "reasoning" && e.text).map((e) => e.text);
  assert.equal(thought.join(""), SCRIPT.reasoning, label);
  const args = events.filter((e) => e.type === "tool_call" && e.index === 0 && e.arguments);
  assert.equal(args.map((e) => e.arguments).join(""), CALLS[0].arguments, label);
}

test("reasoning and tool calls arrive as typed events and in the reply's state", async () => {
  const reply = streamChat({ url: `${gateway.url}/v1/streams`, body: chatBody(SCRIPT) });
  const { events, result } = await collect(reply);
  assertRich(events, result);
  const starts = events.filter((e) => e.type === "tool_call" && e.name);
  // The call's id is `call_id`; `id` stays the event's, numeric, so resume can count on it.
  assert.deepEqual(
    starts.map(({ index, call_id, name }) => ({ index, call_id, name })),
    [
      { index: 0, call_id: "call_w", name: "get_weather" },
      { index: 1, call_id: "call_t", name: "now" },
    ],
  );
  assert.ok(starts.every((e) => typeof e.id === "number" && e.id > 0));
  assert.equal(events.filter((e) => e.type === "tool_call" && e.done).length, 2);
  assert.deepEqual(
    events.filter((e) => e.type === "reasoning" && e.signature).map((e) => e.signature),
    [SCRIPT.signature],
  );
  assert.ok(result.usage.completion_tokens > 0);
});

test("a connection cut inside reasoning or a call resumes with no gap and no repeat", async () => {
  const body = chatBody(SCRIPT);
  const probe = await startProxy(gateway.url);
  await collect(streamChat({ url: `${probe.url}/v1/streams`, body }));
  const raw = Buffer.concat(probe.responses[0]);
  await probe.close();
  const bodyStart = raw.indexOf("\r\n\r\n") + 4;
  assert.ok(raw.length - bodyStart > 400, "the probe saw no body");
  for (let at = bodyStart + 7; at < raw.length - 8; at += 61) {
    const proxy = await startProxy(gateway.url);
    try {
      proxy.cutNext(at);
      const reply = streamChat({ url: `${proxy.url}/v1/streams`, body, retry: FAST_RETRY });
      const { events, result } = await collect(reply);
      assertRich(events, result, `cut at byte ${at}:`);
      assert.equal(proxy.cuts, 1);
    } finally {
      await proxy.close();
    }
  }
});

test("a resume carries what the reply had before the cut", async () => {
  const first = streamChat({
    url: `${gateway.url}/v1/streams`,
    body: chatBody({ ...SCRIPT, delay: 0.02 }),
    onEvent: (event) => {
      if (event.type === "tool_call" && event.index === 0 && event.arguments) first.abort();
    },
  });
  const cut = await first.done;
  assert.equal(cut.status, "aborted");
  const rest = streamChat({
    url: `${gateway.url}/v1/streams`,
    resume: {
      streamId: cut.streamId,
      lastEventId: cut.lastEventId,
      text: cut.text,
      reasoning: cut.reasoning,
      signature: cut.signature,
      redacted: cut.redacted,
      toolCalls: cut.toolCalls,
    },
  });
  const result = await rest.done;
  assert.equal(result.reasoning, SCRIPT.reasoning);
  assert.deepEqual(result.redacted, SCRIPT.redacted);
  assert.equal(result.text, SCRIPT.text);
  assert.deepEqual(result.toolCalls, CALLS);
});

test("the WebSocket gives the same events and the same reply", { skip: skipWs }, async () => {
  const chat = connectChat({ url: `${gateway.url.replace("http://", "ws://")}/ws/chat` });
  try {
    const reply = chat.send({ content: "go", model: "demo", script: SCRIPT });
    const { events, result } = await collect(reply);
    assertRich(events, result);
    const start = events.find((e) => e.type === "tool_call" && e.name);
    assert.equal(start.call_id, "call_w");
  } finally {
    chat.close();
  }
});

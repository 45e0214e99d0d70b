// The Vercel AI SDK's `streamText` with tools, through `@ai-sdk/openai-compatible`, as a Next.js
// route or a Node agent would run it against tokenrelay's `/v1/chat/completions`.
//
// The scripted model makes the calls; `transformRequestBody` (the SDK's own hook) picks the
// script per step: calls first, then an echo of the whole history, so the final text shows
// what reached the model — the tool results included.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { jsonSchema, stepCountIs, streamText, tool } from "ai";

import { startGateway } from "./gateway.mjs";

const CALLS = [
  { id: "call_w", name: "get_weather", arguments: { city: "Paris" }, fragment: 3 },
  { id: "call_t", name: "now" },
];

let gateway;
before(async () => {
  gateway = await startGateway();
});
after(async () => {
  await gateway?.close();
});

function provider(sent) {
  return createOpenAICompatible({
    name: "tokenrelay",
    baseURL: `${gateway.url}/v1`,
    apiKey: "unused",
    includeUsage: true,
    transformRequestBody: (body) => {
      sent.push(body);
      const answered = body.messages.some((m) => m.role === "tool");
      // A delay between fragments, so they stream apart rather than coalesced into one.
      const script = answered ? { echo: "history" } : { tool_calls: CALLS, delay: 0.01 };
      return { ...body, script };
    },
  });
}

const tools = () => ({
  get_weather: tool({
    description: "The weather in a city",
    inputSchema: jsonSchema({
      type: "object",
      properties: { city: { type: "string" } },
      required: ["city"],
    }),
    execute: async ({ city }) => ({ city, celsius: 21 }),
  }),
  now: tool({
    description: "The time",
    inputSchema: jsonSchema({ type: "object", properties: {} }),
    execute: async () => "noon",
  }),
});

test("streamText streams parallel tool calls, runs them, and streams the answer", async () => {
  const sent = [];
  const result = streamText({
    model: provider(sent)("demo"),
    prompt: "Weather in Paris, and the time?",
    tools: tools(),
    stopWhen: stepCountIs(3),
  });
  const parts = [];
  for await (const part of result.fullStream) parts.push(part);
  const errors = parts.filter((p) => p.type === "error");
  assert.deepEqual(errors, []);

  const calls = parts.filter((p) => p.type === "tool-call");
  assert.deepEqual(
    calls.map(({ toolCallId, toolName, input }) => ({ toolCallId, toolName, input })),
    [
      { toolCallId: "call_w", toolName: "get_weather", input: { city: "Paris" } },
      // A call streamed without arguments arrives as "{}": an empty object, not a parse error.
      { toolCallId: "call_t", toolName: "now", input: {} },
    ],
  );
  // The arguments streamed in fragments: the SDK saw input deltas before the call.
  const deltas = parts.filter((p) => p.type === "tool-input-delta" && p.id === "call_w");
  assert.equal(deltas.map((p) => p.delta).join(""), '{"city": "Paris"}');
  assert.ok(deltas.length > 1, "the arguments came whole, not streamed");

  const steps = await result.steps;
  assert.equal(steps.length, 2);
  assert.equal(steps[0].finishReason, "tool-calls");
  assert.equal(steps[1].finishReason, "stop");
  // Tools reached the gateway as OpenAI function tools…
  assert.deepEqual(
    sent[0].tools.map((t) => [t.type, t.function.name]),
    [
      ["function", "get_weather"],
      ["function", "now"],
    ],
  );
  // …and the results reached the model: the echo repeats every message it was given.
  assert.equal(
    await result.text,
    "user: Weather in Paris, and the time? | " +
      'assistant: get_weather({"city":"Paris"}) now({}) | ' +
      'tool: [call_w] {"city":"Paris","celsius":21} | tool: [call_t] noon',
  );
  const usage = await result.totalUsage;
  assert.ok(usage.outputTokens > 0, JSON.stringify(usage));
});

test("a tool choice naming one function reaches the model as OpenAI names it", async () => {
  const sent = [];
  const result = streamText({
    model: provider(sent)("demo"),
    prompt: "Weather?",
    tools: tools(),
    toolChoice: { type: "tool", toolName: "get_weather" },
  });
  await result.consumeStream();
  assert.deepEqual(sent[0].tool_choice, { type: "function", function: { name: "get_weather" } });
  assert.equal((await result.steps)[0].finishReason, "tool-calls");
});

// The Vercel AI SDK against tokenrelay: `@ai-sdk/openai`'s default model speaks the Responses
// API (`POST /v1/responses`), and streams text from any configured model through it.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { createOpenAI } from "@ai-sdk/openai";
import { streamText } from "ai";

import { startGateway } from "./gateway.mjs";

let gateway;
before(async () => {
  gateway = await startGateway();
});
after(async () => {
  await gateway?.close();
});

test("streamText with @ai-sdk/openai's default model streams over /v1/responses", async () => {
  const sent = [];
  const openai = createOpenAI({
    baseURL: `${gateway.url}/v1`,
    apiKey: gateway.key ?? "unused",
    // Only to see what the SDK sends; the request goes out unchanged.
    fetch: async (url, init) => {
      sent.push({ url: String(url), body: JSON.parse(init.body) });
      return fetch(url, init);
    },
  });
  const result = streamText({
    model: openai("demo"),
    system: "Answer briefly.",
    prompt: "hello there",
    temperature: 0.5,
    maxOutputTokens: 50,
  });
  const chunks = [];
  for await (const chunk of result.textStream) chunks.push(chunk);

  // The scripted demo model echoes the last user message, word by word.
  assert.equal(chunks.join(""), "You said: hello there");
  assert.ok(chunks.length > 1, "the text came whole, not streamed");
  assert.equal(await result.finishReason, "stop");
  assert.ok((await result.usage).outputTokens > 0);
  assert.equal(sent.length, 1);
  assert.match(sent[0].url, /\/v1\/responses$/);
  const { body } = sent[0];
  assert.equal(body.stream, true);
  assert.equal(body.model, "demo");
  assert.equal(body.temperature, 0.5);
  assert.equal(body.max_output_tokens, 50);
});

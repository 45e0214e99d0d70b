// connectChat() over WS /ws/chat: the same events as streamChat, cancel, resume after a drop.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { connectChat } from "../../src/tokenrelay/web/tokenrelay.js";
import { startGateway, startProxy, words } from "./gateway.mjs";

const FAST_RETRY = { retries: 5, baseDelay: 20, maxDelay: 200 };
const skip = typeof WebSocket === "undefined" ? "run node with --experimental-websocket" : false;

let gateway;
before(async () => {
  gateway = await startGateway();
});
after(async () => {
  await gateway?.close();
});

const wsUrl = (http) => `${http.replace("http://", "ws://")}/ws/chat`;

async function collect(reply) {
  const events = [];
  for await (const event of reply) events.push(event);
  return { events, result: await reply.done };
}

test("a turn over the socket yields the native wire's events", { skip }, async () => {
  const chat = connectChat({ url: wsUrl(gateway.url) });
  try {
    const text = "Socket 🔌 says 你好 to you";
    const { events, result } = await collect(
      chat.send({ content: "hi", model: "demo", script: { text, split_utf8: true } }),
    );
    assert.equal(result.status, "complete");
    assert.equal(result.text, text);
    assert.equal(events[0].type, "stream");
    assert.equal(events[0].stream_id, result.streamId);
    assert.deepEqual(
      events.slice(-2).map((e) => e.type),
      ["usage", "done"],
    );
    // The socket keeps the conversation: the next turn sees the first one.
    const second = await chat.send({ content: "again", script: { echo: "history" } }).done;
    assert.equal(second.text, `user: hi | assistant: ${text} | user: again`);
  } finally {
    chat.close();
  }
});

test("cancel over the socket stops the generation", { skip }, async () => {
  const chat = connectChat({ url: wsUrl(gateway.url) });
  try {
    const reply = chat.send(
      { content: "go", script: { tokens: words(200).tokens, delay: 0.02 } },
      {
        onEvent: (event, current) => {
          if (event.type === "token" && current.text.length > 12) chat.cancel();
        },
      },
    );
    const { events, result } = await collect(reply);
    assert.equal(result.status, "cancelled");
    assert.equal(events.at(-1).code, "cancelled");
    assert.ok(result.text.length < words(200).text.length);
  } finally {
    chat.close();
  }
});

test("a dropped socket is reopened and the reply resumes with no gap", { skip }, async () => {
  const { tokens, text } = words(30);
  const proxy = await startProxy(gateway.url);
  const chat = connectChat({ url: wsUrl(proxy.url), retry: FAST_RETRY });
  try {
    let cut = false;
    const reply = chat.send(
      { content: "go", script: { tokens, delay: 0.02 } },
      {
        onEvent: (event, current) => {
          if (!cut && event.type === "token" && current.text.length > 20) {
            cut = true;
            proxy.cutAll();
          }
        },
      },
    );
    const { events, result } = await collect(reply);
    assert.ok(cut);
    assert.equal(result.status, "complete");
    assert.equal(result.text, text);
    assert.equal(proxy.connections, 2);
    assert.equal(events.filter((e) => e.type === "reconnected").length, 1);
    const tokenTexts = events.filter((e) => e.type === "token").map((e) => e.text);
    assert.equal(tokenTexts.join(""), text);
  } finally {
    chat.close();
    await proxy.close();
  }
});

test("an error before the reply starts ends the turn with that error", { skip }, async () => {
  const chat = connectChat({ url: wsUrl(gateway.url) });
  try {
    const { events, result } = await collect(chat.send({ content: "hi", model: "nope" }));
    assert.equal(result.status, "error");
    assert.equal(events.at(-1).code, "not_found");
  } finally {
    chat.close();
  }
});

test("with auth on, the token option authenticates the socket", { skip }, async () => {
  const secured = await startGateway({ auth: true });
  try {
    const refused = connectChat({ url: wsUrl(secured.url), retry: { retries: 0 } });
    const denied = await collect(refused.send({ content: "hi", model: "demo" }));
    assert.notEqual(denied.result.status, "complete");
    refused.close();

    const chat = connectChat({ url: wsUrl(secured.url), token: secured.key });
    try {
      const { result } = await collect(
        chat.send({ content: "hi", model: "demo", script: { text: "let in" } }),
      );
      assert.equal(result.status, "complete");
      assert.equal(result.text, "let in");
    } finally {
      chat.close();
    }
  } finally {
    await secured.close();
  }
});

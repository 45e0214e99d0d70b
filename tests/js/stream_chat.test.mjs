// streamChat() against a live tokenrelay: order, resume without gap or repeat, cancel, errors.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { streamChat } from "../../src/tokenrelay/web/tokenrelay.js";
import { chatBody, startGateway, startProxy, words } from "./gateway.mjs";

const FAST_RETRY = { retries: 5, baseDelay: 20, maxDelay: 200 };

let gateway;
before(async () => {
  gateway = await startGateway();
});
after(async () => {
  await gateway?.close();
});

async function collect(reply) {
  const events = [];
  for await (const event of reply) events.push(event);
  return { events, result: await reply.done };
}

/** Ids only go up, and token texts concatenated are the result's text. */
function assertCoherent(events, result) {
  const ids = events.filter((e) => e.id).map((e) => e.id);
  assert.deepEqual(ids, [...ids].sort((a, b) => a - b), "ids out of order");
  assert.equal(new Set(ids).size, ids.length, "an event was delivered twice");
  const tokens = events.filter((e) => e.type === "token").map((e) => e.text);
  assert.equal(tokens.join(""), result.text);
}

test("a reply streams every token in order and ends with done", async () => {
  const { tokens, text } = words(12);
  const reply = streamChat({
    url: `${gateway.url}/v1/streams`,
    body: chatBody({ tokens, delay: 0.005 }),
  });
  const { events, result } = await collect(reply);
  assert.equal(result.status, "complete");
  assert.equal(result.text, text);
  assert.equal(result.finishReason, "stop");
  assert.equal(result.usage.completion_tokens, 12);
  assert.equal(events[0].type, "stream");
  assert.equal(events[0].stream_id, result.streamId);
  assert.equal(events.at(-1).type, "done");
  assertCoherent(events, result);
});

test("characters the upstream splits mid-UTF-8 arrive whole", async () => {
  const text = "Grüße 👋🏽 世界 — こんにちは 🇫🇷 ok";
  const reply = streamChat({
    url: `${gateway.url}/v1/streams`,
    body: chatBody({ text, split_utf8: true }),
  });
  const { result } = await collect(reply);
  assert.equal(result.text, text);
});

test("a connection cut at any point of the body resumes with no gap and no repeat", async () => {
  const text = "Resume me: 🧵 続き and the rest of a fairly long reply that spans frames.";
  const body = chatBody({ text });
  // One clean run through the proxy measures the response, so the cuts land inside the body.
  const probe = await startProxy(gateway.url);
  await collect(streamChat({ url: `${probe.url}/v1/streams`, body }));
  const raw = Buffer.concat(probe.responses[0]);
  await probe.close();
  const bodyStart = raw.indexOf("\r\n\r\n") + 4;
  assert.ok(bodyStart > 4 && raw.length - bodyStart > 200, "the probe saw no body");
  const cuts = [];
  for (let at = bodyStart + 1; at < raw.length - 8; at += 23) cuts.push(at);

  for (const at of cuts) {
    const proxy = await startProxy(gateway.url);
    try {
      proxy.cutNext(at);
      const reply = streamChat({ url: `${proxy.url}/v1/streams`, body, retry: FAST_RETRY });
      const { events, result } = await collect(reply);
      assert.equal(result.status, "complete", `cut at ${at}: ${result.error?.message}`);
      assert.equal(result.text, text, `cut at byte ${at}`);
      assert.equal(proxy.cuts, 1);
      assert.equal(events.filter((e) => e.type === "reconnecting").length, 1);
      assertCoherent(events, result);
    } finally {
      await proxy.close();
    }
  }
});

test("a connection dropped while the model is still writing resumes live", async () => {
  const { tokens, text } = words(30);
  const proxy = await startProxy(gateway.url);
  try {
    let cut = false;
    const reply = streamChat({
      url: `${proxy.url}/v1/streams`,
      body: chatBody({ tokens, delay: 0.02 }),
      retry: FAST_RETRY,
      onEvent: (event, current) => {
        if (!cut && event.type === "token" && current.text.length > 20) {
          cut = true;
          proxy.cutAll();
        }
      },
    });
    const { events, result } = await collect(reply);
    assert.ok(cut);
    assert.equal(result.status, "complete");
    assert.equal(result.text, text);
    assert.ok(proxy.connections >= 2);
    const resumed = events.findIndex((e) => e.type === "reconnected");
    assert.ok(resumed > 0, "no reconnected event");
    assert.ok(events.slice(resumed).some((e) => e.type === "token"), "nothing came after the drop");
    assertCoherent(events, result);
    // The server was asked for the events after the last one seen, not for a replay.
    const second = Buffer.concat(proxy.responses[1]).toString();
    const firstId = Number(/^id: (\d+)$/m.exec(second)[1]);
    assert.ok(firstId > 2, `the resumed response started at id ${firstId}`);
  } finally {
    await proxy.close();
  }
});

test("a connection that goes silent is dropped after stallTimeout and resumed", async () => {
  const { tokens, text } = words(20);
  const proxy = await startProxy(gateway.url);
  try {
    let frozen = false;
    const reply = streamChat({
      url: `${proxy.url}/v1/streams`,
      body: chatBody({ tokens, delay: 0.02 }),
      retry: FAST_RETRY,
      stallTimeout: 300,
      onEvent: (event) => {
        if (!frozen && event.type === "token") {
          frozen = true;
          proxy.freeze();
        }
      },
    });
    const { events, result } = await collect(reply);
    assert.equal(result.status, "complete");
    assert.equal(result.text, text);
    assert.match(events.find((e) => e.type === "reconnecting").reason, /no data for 300 ms/);
  } finally {
    await proxy.close();
  }
});

test("cancel stops the generation on the server", async () => {
  const { tokens } = words(200);
  const reply = streamChat({
    url: `${gateway.url}/v1/streams`,
    body: chatBody({ tokens, delay: 0.02 }),
    onEvent: (event, current) => {
      if (event.type === "token" && current.text.length > 12) current.cancel();
    },
  });
  const { events, result } = await collect(reply);
  assert.equal(result.status, "cancelled");
  assert.equal(events.at(-1).type, "error");
  assert.equal(events.at(-1).code, "cancelled");
  assert.ok(result.text.length < words(200).text.length);
  // The server's own record of the stream ends the same way.
  const replay = await fetch(`${gateway.url}/v1/streams/${result.streamId}`);
  const log = await replay.text();
  assert.match(log, /event: error\ndata: \{"code":"cancelled"/);
  assert.doesNotMatch(log, /event: done/);
});

test("cancel before the server has named the stream waits for the name", async () => {
  const reply = streamChat({
    url: `${gateway.url}/v1/streams`,
    body: chatBody({ tokens: ["never "], first_delay: 5 }),
  });
  const answer = await reply.cancel();
  const result = await reply.done;
  assert.equal(answer.cancelled, true);
  assert.equal(result.status, "cancelled");
  assert.equal(result.text, "");
});

test("an HTTP error before the stream is one error event with its status", async () => {
  const missing = await collect(
    streamChat({ url: `${gateway.url}/v1/streams`, body: { ...chatBody({}), model: "nope" } }),
  );
  assert.equal(missing.result.status, "error");
  assert.deepEqual(
    missing.events.map((e) => [e.type, e.code, e.status, e.retryable]),
    [["error", "not_found", 404, false]],
  );

  const limited = await collect(
    streamChat({
      url: `${gateway.url}/v1/streams`,
      body: chatBody({ fail: "rate_limited", retry_after: 3 }),
    }),
  );
  const [error] = limited.events;
  assert.equal(error.code, "rate_limited");
  assert.equal(error.status, 429);
  assert.equal(error.retryAfter, 3);
  assert.equal(error.retryable, true);
});

test("abort stops reading, and a later resume gets the rest of the reply", async () => {
  const { tokens, text } = words(20);
  const first = streamChat({
    url: `${gateway.url}/v1/streams`,
    body: chatBody({ tokens, delay: 0.02 }),
    onEvent: (event, current) => {
      if (event.type === "token" && current.text.length > 15) current.abort();
    },
  });
  const cut = await first.done;
  assert.equal(cut.status, "aborted");
  assert.ok(cut.text.length > 15 && cut.text.length < text.length);

  // As the page does after a reload: the saved id and text, and on from there.
  const second = streamChat({
    url: `${gateway.url}/v1/streams`,
    resume: { streamId: cut.streamId, lastEventId: cut.lastEventId, text: cut.text },
  });
  const { events, result } = await collect(second);
  assert.equal(result.status, "complete");
  assert.equal(result.text, text);
  assert.ok(events.every((e) => !e.id || e.id > cut.lastEventId));
});

test("an AbortSignal ends the reply as aborted", async () => {
  const controller = new AbortController();
  const reply = streamChat({
    url: `${gateway.url}/v1/streams`,
    body: chatBody({ tokens: words(50).tokens, delay: 0.02 }),
    signal: controller.signal,
    onEvent: (event) => {
      if (event.type === "token") controller.abort();
    },
  });
  const { result } = await collect(reply);
  assert.equal(result.status, "aborted");
});

test("re-attaching to a stream the server no longer has ends with not_found", async () => {
  const reply = streamChat({
    url: `${gateway.url}/v1/streams`,
    resume: { streamId: "str_gone", lastEventId: 3 },
    retry: FAST_RETRY,
  });
  const { events, result } = await collect(reply);
  assert.equal(result.status, "error");
  assert.equal(events.at(-1).code, "not_found");
  assert.equal(events.at(-1).status, 404);
});

test("with the server gone, retries are bounded and end in network_error", async () => {
  const { tokens } = words(40);
  const proxy = await startProxy(gateway.url);
  let reply;
  try {
    reply = streamChat({
      url: `${proxy.url}/v1/streams`,
      body: chatBody({ tokens, delay: 0.02 }),
      retry: { retries: 3, baseDelay: 10, maxDelay: 40 },
      onEvent: (event, current) => {
        if (event.type === "token" && current.text.length > 10 && proxy.close) {
          const closing = proxy.close();
          proxy.close = null;
          return closing;
        }
      },
    });
    const { events, result } = await collect(reply);
    assert.equal(result.status, "error");
    assert.equal(result.error.code, "network_error");
    assert.equal(events.filter((e) => e.type === "reconnecting").length, 3);
  } finally {
    await proxy.close?.();
    if (reply?.streamId) {
      await fetch(`${gateway.url}/v1/streams/${reply.streamId}`, { method: "DELETE" });
    }
  }
});

// A live tokenrelay for the client tests, and a TCP proxy that can cut connections.
//
// `tests/test_js_client.py` starts one gateway and passes its URL in TOKENRELAY_URL; run
// alone (`node --experimental-websocket --test tests/js/`), each file starts its own
// `tokenrelay serve` with the scripted `demo` model.

import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");

export const CONFIG = `
[models.demo]
provider = "scripted"

[streams]
ping_interval = 0.5
resume_grace = 10
`;

function freePort() {
  return new Promise((ok, fail) => {
    const server = net.createServer();
    server.on("error", fail);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => ok(port));
    });
  });
}

async function waitHealthy(url, child, deadline) {
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`tokenrelay exited with ${child.exitCode}`);
    try {
      const response = await fetch(`${url}/healthz`);
      if (response.ok) return;
    } catch {
      // Not listening yet.
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error("tokenrelay did not become healthy in time");
}

/** The gateway under test: `{url, close()}`. */
export async function startGateway({ auth = false } = {}) {
  if (process.env.TOKENRELAY_URL && !auth) {
    return { url: process.env.TOKENRELAY_URL.replace(/\/$/, ""), close: async () => {} };
  }
  const bin = process.env.TOKENRELAY_BIN ?? join(ROOT, ".venv", "bin", "tokenrelay");
  const folder = mkdtempSync(join(tmpdir(), "tokenrelay-js-"));
  const config = join(folder, "tokenrelay.toml");
  writeFileSync(config, CONFIG);
  const env = {
    ...process.env,
    TOKENRELAY_DATABASE_URL: `sqlite:///${join(folder, "t.db")}`,
    TOKENRELAY_AUTH__ENABLED: auth ? "true" : "false",
  };
  execFileSync(bin, ["db", "upgrade", "--config", config], { env, stdio: "ignore" });
  // `keys create` prints the new key alone on its first line.
  const key = auth
    ? execFileSync(bin, ["keys", "create", "--owner", "js", "--config", config], { env })
        .toString()
        .split("\n")[0]
        .trim()
    : null;
  const port = await freePort();
  const child = spawn(bin, ["serve", "--config", config, "--port", String(port)], {
    env,
    stdio: ["ignore", "ignore", "inherit"],
  });
  const url = `http://127.0.0.1:${port}`;
  try {
    await waitHealthy(url, child, Date.now() + 15000);
  } catch (exc) {
    child.kill();
    throw exc;
  }
  return {
    url,
    key,
    close: async () => {
      const exited = new Promise((r) => child.once("exit", r));
      child.kill("SIGTERM");
      await exited;
      rmSync(folder, { recursive: true, force: true });
    },
  };
}

/**
 * A loopback TCP proxy to `target`. `cutNext(bytes)` makes the next connection die (both
 * sockets destroyed, as a dropped network would) once `bytes` response bytes have passed;
 * `cutAll()` drops every open connection now; `freeze()` silently swallows what the open
 * connections would receive from now on (a link that stalls without closing).
 * `responses` holds each connection's response bytes.
 */
export async function startProxy(target) {
  const { hostname, port } = new URL(target);
  const sockets = new Set();
  const frozen = new Set();
  let cutAfter = null;
  const proxy = {
    connections: 0,
    cuts: 0,
    responses: [],
    freeze() {
      for (const socket of sockets) frozen.add(socket);
    },
    cutNext(bytes) {
      cutAfter = bytes;
    },
    cutAll() {
      for (const socket of sockets) socket.destroy();
    },
  };
  const server = net.createServer((client) => {
    proxy.connections += 1;
    const limit = cutAfter;
    cutAfter = null;
    const upstream = net.connect(Number(port), hostname);
    sockets.add(client).add(upstream);
    let passed = 0;
    const received = [];
    proxy.responses.push(received);
    client.pipe(upstream);
    upstream.on("data", (chunk) => {
      if (frozen.has(upstream)) return;
      received.push(chunk);
      if (limit !== null && passed + chunk.length >= limit) {
        client.write(chunk.subarray(0, Math.max(0, limit - passed)));
        proxy.cuts += 1;
        client.destroy();
        upstream.destroy();
        return;
      }
      passed += chunk.length;
      client.write(chunk);
    });
    const close = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
      frozen.delete(upstream);
    };
    for (const socket of [client, upstream]) {
      socket.on("error", close);
      socket.on("close", close);
    }
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  proxy.url = `http://127.0.0.1:${server.address().port}`;
  proxy.close = () =>
    new Promise((r) => {
      proxy.cutAll();
      server.close(r);
    });
  return proxy;
}

/** A native-wire body for the scripted model. */
export function chatBody(script, content = "hi") {
  return { model: "demo", messages: [{ role: "user", content }], script };
}

/** Words "w00 " … for `count` tokens, and their text. */
export function words(count) {
  const tokens = Array.from({ length: count }, (_, i) => `w${String(i).padStart(2, "0")} `);
  return { tokens, text: tokens.join("") };
}

/** Every event of a reply, and its result. */
export async function collect(reply) {
  const events = [];
  for await (const event of reply) events.push(event);
  return { events, result: await reply.done };
}

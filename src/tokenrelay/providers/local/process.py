"""One worker process, seen from the gateway: requests out, answers and tokens in.

The line protocol is described in :mod:`tokenrelay.providers.local.worker`. One reader task
reads the worker's stdout and hands each line to whoever waits for it: a future for a
request, a queue for a generation. When the process ends, everything still waiting is told
at once: requests and generations get :class:`~tokenrelay.errors.UpstreamError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
import sys
from dataclasses import dataclass
from typing import Any

import orjson

from tokenrelay import errors

logger = logging.getLogger("tokenrelay.providers.local")

# A prompt's tokens come back as one line: a long context is hundreds of kilobytes.
LINE_LIMIT = 64 * 1024 * 1024
STOP_GRACE = 2.0


@dataclass(slots=True, frozen=True)
class End:
    """A generation's last line: how many tokens it made and why it stopped."""

    tokens: int
    finish: str
    error: str | None


Item = str | End | errors.TokenRelayError


def describe_exit(returncode: int | None) -> str:
    """``was killed by SIGSEGV``, ``exited with status 1``: how a worker ended, for people."""
    if returncode is None:
        return "stopped answering"
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


class WorkerProcess:
    """A started worker; :meth:`start` returns once its model is loaded and can generate."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.n_ctx = 0
        self.decoded = 0
        self.exit_reason: str | None = None
        # The worker itself said it cannot load (a bad file, no chat template): trying again
        # by itself would only fail the same way.
        self.fatal = False
        self._process: asyncio.subprocess.Process | None = None
        self._ids = itertools.count(1)
        self._requests: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._generations: dict[int, asyncio.Queue[Item]] = {}
        self._reader: asyncio.Task[None] | None = None
        self.ended = asyncio.Event()
        # Generations still running when the process ended (they got UpstreamError).
        self.lost = 0

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def alive(self) -> bool:
        return self._process is not None and not self.ended.is_set()

    async def start(self, config: dict[str, Any], timeout: float) -> None:
        """Spawn the worker and wait until it is ready; raise UpstreamUnavailable if it fails."""
        self._process = process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tokenrelay.providers.local.worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=LINE_LIMIT,
        )
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(orjson.dumps(config) + b"\n")
        try:
            async with asyncio.timeout(timeout):
                line = await process.stdout.readline()
        except TimeoutError:
            await self.stop()
            raise errors.UpstreamUnavailable(
                f"the local model {self.model_name} did not load within {timeout:g} s"
            ) from None
        hello = orjson.loads(line) if line else {}
        if "ready" not in hello:
            await self.stop()
            self.fatal = "fatal" in hello
            reason = hello.get("fatal") or (
                f"its worker {describe_exit(process.returncode)} while it loaded the model"
                " and decoded a first token: the llama.cpp build may not run on this CPU"
            )
            self.exit_reason = reason
            raise errors.UpstreamUnavailable(reason)
        self.n_ctx = int(hello["ready"]["n_ctx"])
        self._reader = asyncio.create_task(self._read(process.stdout))

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Ask for a prompt's tokens or a text's count; the worker answers at once."""
        ident = next(self._ids)
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._requests[ident] = answer
        try:
            self._send({"op": op, "id": ident, **fields})
            return await answer
        finally:
            self._requests.pop(ident, None)

    def generate(self, **fields: Any) -> tuple[int, asyncio.Queue[Item]]:
        """Start a generation (after any running one); its text and end arrive on the queue."""
        ident = next(self._ids)
        items: asyncio.Queue[Item] = asyncio.Queue()
        self._generations[ident] = items
        self._send({"op": "generate", "id": ident, **fields})
        return ident, items

    def cancel(self, ident: int) -> None:
        """Stop a generation within a token; its remaining lines are dropped."""
        if self._generations.pop(ident, None) is not None and self.alive:
            self._send({"op": "cancel", "id": ident})

    def _send(self, message: dict[str, Any]) -> None:
        if not self.alive:
            raise self._crashed()
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write(orjson.dumps(message) + b"\n")

    def _crashed(self) -> errors.UpstreamError:
        return errors.UpstreamError(
            f"the local model crashed: its worker {self.exit_reason or 'is gone'}"
        )

    async def _read(self, stdout: asyncio.StreamReader) -> None:
        try:
            while line := await stdout.readline():
                self._dispatch(orjson.loads(line))
        except (ValueError, asyncio.LimitOverrunError) as exc:
            logger.error(
                "local model %s: unreadable line from the worker: %s", self.model_name, exc
            )
        finally:
            await self._ended()

    def _dispatch(self, message: dict[str, Any]) -> None:
        ident = message["id"]
        if "decoded" in message:
            self.decoded = message["decoded"]
        if "text" in message or "end" in message:
            items = self._generations.get(ident)
            if items is None:  # cancelled: the worker was still winding it down
                return
            if "end" in message:
                del self._generations[ident]
                items.put_nowait(End(message["tokens"], message["finish"], message.get("error")))
            else:
                items.put_nowait(message["text"])
            return
        answer = self._requests.get(ident)
        if answer is not None and not answer.done():
            answer.set_result(message)

    async def _ended(self) -> None:
        process = self._process
        assert process is not None
        returncode = await self._wait_or_kill(process)
        self.exit_reason = self.exit_reason or describe_exit(returncode)
        self.ended.set()
        crashed = self._crashed()
        for answer in self._requests.values():
            if not answer.done():
                answer.set_exception(crashed)
        for items in self._generations.values():
            items.put_nowait(crashed)
        self.lost = len(self._generations)
        self._generations.clear()

    @staticmethod
    async def _wait_or_kill(process: asyncio.subprocess.Process) -> int:
        # Killed only if it is still there after a grace: Popen.send_signal() reaps a child
        # that has just exited, which would rob asyncio's child watcher of its exit status.
        try:
            async with asyncio.timeout(STOP_GRACE):
                return await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            return await process.wait()

    async def stop(self) -> None:
        """End the worker: closing its input asks it to leave; a kill follows after a grace."""
        process = self._process
        if process is None:
            return
        if process.returncode is None:
            self.exit_reason = self.exit_reason or "was stopped"
            assert process.stdin is not None
            process.stdin.close()
            await self._wait_or_kill(process)
        if self._reader is not None:
            await self._reader
        else:
            self.ended.set()

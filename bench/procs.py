"""Child processes: start them, pin them to cores, read their CPU time and memory from /proc, end
them by PID.

Where they run. On a machine of two or more cores the bench splits the cores it may use in two
halves: the servers under test (each gateway, the bare loop, the naive proxy) run on the upper
half, and everything that makes their load (this process, the fake upstream, redis-server, the
span sink) on the lower. A server then never waits for the load generator's turn on its core,
nor it for the server's, so the percentiles measure the server and not the scheduler; this is
the layout of the independent harness issue #17 cites. On one core nothing is pinned.

Time to first token is measured unpinned (:func:`unpinned`): one request at a time leaves
nothing to contend for, and pinned, each of its four hops between processes crosses cores.
On this 2-core VM that costs a wake-up of the other, idle, virtual CPU per hop: the bare loop's
added p50 went from 0.22-0.29 ms to 0.32-0.45, tokenrelay's p99 from about 1 ms to 1.6-5 ms.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar, Literal

Role = Literal["server", "load", "any"]

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def raise_fd_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE for this process and the children it starts; return the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    with contextlib.suppress(ValueError, OSError):
        # Root may raise the hard limit too; others get as far as the hard limit allows.
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
        return wanted
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    return min(wanted, hard)


# The cores this process may use, read before pin_self narrows them: "any" is all of these.
USABLE_CORES = sorted(os.sched_getaffinity(0))


def cores(role: Role) -> set[int]:
    """The cores a process of ``role`` runs on: the servers' half, the load's half, or all."""
    if role == "any" or len(USABLE_CORES) < 2:
        return set(USABLE_CORES)
    half = len(USABLE_CORES) // 2
    return set(USABLE_CORES[half:]) if role == "server" else set(USABLE_CORES[:half])


def pin_self(role: Role) -> None:
    """Move this process's thread (and the children it starts from now on) to ``role``'s
    cores; the bench's own threads are short-lived ``to_thread`` helpers."""
    os.sched_setaffinity(0, cores(role))


@contextlib.contextmanager
def unpinned() -> Iterator[None]:
    """Every running child, and this process, free to run on any core until the block ends."""
    pin_self("any")
    for child in Child.running:
        child.pin("any")
    try:
        yield
    finally:
        pin_self("load")
        for child in Child.running:
            child.pin(child.role)


def layout() -> str:
    server, load = cores("server"), cores("load")
    if server == load:
        return "one core: nothing pinned"
    return (
        f"servers on cores {_span(server)}, load generator and upstream on {_span(load)}; "
        "time to first token unpinned"
    )


def _span(cpus: set[int]) -> str:
    ordered = sorted(cpus)
    return str(ordered[0]) if len(ordered) == 1 else f"{ordered[0]}-{ordered[-1]}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Child:
    """A process started by the benchmark, listening on ``127.0.0.1:port``."""

    running: ClassVar[list[Child]] = []
    """Children started and not yet stopped, for :func:`unpinned`."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        port: int,
        log_dir: Path,
        env: dict[str, str] | None = None,
        role: Role = "load",
    ) -> None:
        self.name = name
        self.role: Role = role
        self.port = port
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.pid = self.proc.pid
        self.pin(role)
        Child.running.append(self)

    def pin(self, role: Role) -> None:
        """Move each of its threads, and its processes' (``--workers``), to ``role``'s cores;
        threads and processes started later inherit them."""
        cpus = cores(role)
        for tid in _threads_under(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(tid, cpus)

    def wait_listening(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.tail()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen on port {self.port} within {timeout}s")

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used so far."""
        with open(f"/proc/{self.pid}/stat", "rb") as stat:
            # The command name may hold spaces; fields after it are fixed.
            fields = stat.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * PAGE_SIZE

    def tail(self, lines: int = 20) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; this PID only."""
        if self in Child.running:
            Child.running.remove(self)
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(grace)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(grace)
        finally:
            self._log.close()


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def _threads_under(pid: int) -> list[int]:
    """The threads of ``pid`` and of every process below it."""
    threads, pids = [], [pid]
    while pids:
        here = pids.pop()
        try:
            tids = [int(tid) for tid in os.listdir(f"/proc/{here}/task")]
        except FileNotFoundError:
            continue
        threads += tids
        for tid in tids:
            with contextlib.suppress(FileNotFoundError):
                children = Path(f"/proc/{here}/task/{tid}/children").read_text()
                pids += [int(child) for child in children.split()]
    return threads

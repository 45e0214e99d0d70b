"""``tokenrelay serve --workers N``: N gateway processes on one listening socket.

The parent binds the socket and starts each worker with it (``--worker-fd``); the kernel hands
every new connection to one of them. The workers are separate instances sharing the stream log,
limits and store through Redis and the database, so a stream started on one is resumed or
stopped on another exactly as across machines; without ``redis_url`` they would be islands,
which is why ``--workers`` refuses to start without it. A worker that dies is started again
(after a second); SIGTERM or SIGINT is passed on to every worker, and the parent waits for them.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

from tokenrelay.config import Settings

RESTART_DELAY = 1.0


def refusal(settings: Settings, workers: int) -> str | None:
    """Why ``--workers`` cannot be used with these settings, or None."""
    if workers < 1:
        return "--workers must be at least 1"
    if workers > 1 and settings.redis_url is None:
        return (
            f"--workers {workers} needs redis_url: each worker is an instance of its own, and "
            "only through Redis do they share streams (resume, cancel) and limits"
        )
    return None


def bind(settings: Settings) -> socket.socket:
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run_workers(settings: Settings, count: int, argv: Sequence[str]) -> int:
    """Serve with ``count`` workers, each ``tokenrelay serve argv --worker-fd …``."""
    sock = bind(settings)
    fd = sock.fileno()
    command = [sys.executable, "-m", "tokenrelay.cli", "serve", *argv, "--worker-fd", str(fd)]
    stopping = False

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(command, pass_fds=(fd,))

    workers = [start() for _ in range(count)]

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while not stopping:
            for index, worker in enumerate(workers):
                if worker.poll() is not None and not stopping:
                    sys.stderr.write(
                        f"tokenrelay: worker {worker.pid} exited ({worker.returncode}); "
                        "starting another\n"
                    )
                    time.sleep(RESTART_DELAY)
                    workers[index] = start()
            time.sleep(0.2)
        for worker in workers:
            worker.wait()
    finally:
        sock.close()
    return 0

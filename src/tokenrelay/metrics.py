"""Prometheus text exposition of what the relay is doing."""

from __future__ import annotations

from collections import Counter

from tokenrelay.providers.base import WORKER_STATES
from tokenrelay.relay import Relay


def render_metrics(relay: Relay) -> str:
    by_status = Counter(stream.status for stream in relay.streams.values())
    viewers = sum(stream.viewers for stream in relay.streams.values())
    lines = [
        "# HELP tokenrelay_streams Streams held in memory, by status.",
        "# TYPE tokenrelay_streams gauge",
        *(
            f'tokenrelay_streams{{status="{status}"}} {by_status.get(status, 0)}'
            for status in ("streaming", "complete", "cancelled", "error")
        ),
        "# HELP tokenrelay_stream_viewers Connections following a stream.",
        "# TYPE tokenrelay_stream_viewers gauge",
        f"tokenrelay_stream_viewers {viewers}",
        "# HELP tokenrelay_streams_started_total Streams started since the process began.",
        "# TYPE tokenrelay_streams_started_total counter",
        f"tokenrelay_streams_started_total {relay.started_total}",
    ]
    workers = {
        name: health
        for name, provider in relay.providers.items()
        if (health := provider.worker_health()) is not None
    }
    if workers:
        lines += [
            "# HELP tokenrelay_local_worker_state The state of each local model's worker process.",
            "# TYPE tokenrelay_local_worker_state gauge",
            *(
                f'tokenrelay_local_worker_state{{model="{name}",state="{state}"}} '
                f"{int(health.state == state)}"
                for name, health in workers.items()
                for state in WORKER_STATES
            ),
            "# HELP tokenrelay_local_worker_restarts_total Workers started again after one died.",
            "# TYPE tokenrelay_local_worker_restarts_total counter",
            *(
                f'tokenrelay_local_worker_restarts_total{{model="{name}"}} {health.restarts}'
                for name, health in workers.items()
            ),
            "# HELP tokenrelay_local_queue_depth Requests waiting for a busy local model.",
            "# TYPE tokenrelay_local_queue_depth gauge",
            *(
                f'tokenrelay_local_queue_depth{{model="{name}"}} {health.queue_depth}'
                for name, health in workers.items()
            ),
        ]
    return "\n".join(lines) + "\n"

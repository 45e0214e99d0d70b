"""Prometheus text exposition of what the relay is doing."""

from __future__ import annotations

from collections import Counter

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
    return "\n".join(lines) + "\n"

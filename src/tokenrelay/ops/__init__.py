"""What operators need: metrics, traces, the stream-end log line, request ids, readiness, CORS.

Nothing here imports the relay, the wires or the server: they call in, this package never
calls out, so it sits below all of them.
"""

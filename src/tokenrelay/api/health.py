"""For operators: liveness, readiness (every dependency pinged), and metrics."""

from __future__ import annotations

from collections import Counter

from starlette.requests import Request
from starlette.responses import Response

from tokenrelay import errors
from tokenrelay.http.errors import error_response
from tokenrelay.http.responses import JSONResponse
from tokenrelay.ops.wiring import CONTENT_TYPE
from tokenrelay.providers.base import WORKER_STATES
from tokenrelay.services import services_of


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    services = services_of(request)
    if services.relay.closing:
        # Out of rotation at once on SIGTERM, while the streams in flight drain.
        return JSONResponse({"status": "draining"}, status_code=503)
    found = await services.ops.readiness.check()
    # A local model's worker that is down is shown and named, not a reason to take the
    # instance out of rotation: every other model still answers, and the supervisor brings
    # it back.
    workers = services.ops.workers()
    down = [name for name, up in found.items() if not up]
    down += [f"worker:{name}" for name, health in workers.items() if health.state != "ready"]
    counts = Counter(health.state for health in workers.values())
    dependencies = {name: "ok" if up else "unreachable" for name, up in found.items()}
    if not all(found.values()):
        return JSONResponse(
            {"status": "unavailable", **dependencies, "down": down}, status_code=503
        )
    return JSONResponse(
        {
            "status": "ready",
            # How many models, never their names: /readyz answers without credentials.
            "models": len(services.providers),
            **dependencies,
            "workers": {state: counts[state] for state in WORKER_STATES},
            "down": down,
        }
    )


async def metrics(request: Request) -> Response:
    ops = services_of(request).ops
    if ops.metrics is None:
        return error_response(errors.NotFound("metrics are turned off (observability.metrics)"))
    return Response(await ops.render(), media_type=CONTENT_TYPE)

"""For operators: liveness, readiness (every dependency pinged), and metrics."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from tokenrelay.http.responses import JSONResponse
from tokenrelay.metrics import render_metrics
from tokenrelay.services import services_of

logger = logging.getLogger("tokenrelay")


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    services = services_of(request)
    checks = await services.readiness()
    down = [name for name, outcome in checks.items() if outcome != "ok"]
    if down:
        logger.warning("readiness: %s did not answer", ", ".join(down))
        return JSONResponse({"status": "unavailable", **checks}, status_code=503)
    # A local model's worker that is down is shown, not a reason to take the instance out
    # of rotation: every other model still answers, and the supervisor brings it back.
    return JSONResponse(
        {
            "status": "ready",
            # How many models, never their names: /readyz answers without credentials.
            "models": len(services.providers),
            **checks,
            "workers": services.workers(),
        }
    )


async def metrics(request: Request) -> Response:
    relay = services_of(request).relay
    return PlainTextResponse(render_metrics(relay), media_type="text/plain; version=0.0.4")

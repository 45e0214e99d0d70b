"""The proxy the blog posts write: FastAPI + ``AsyncOpenAI`` + ``StreamingResponse``.

Measured for reference only, as a column beside tokenrelay. It forwards the body's extra fields
(the fake upstream's pacing directions) so both relay exactly the same streams.

    python -m bench.naive_proxy --port 8001 --upstream http://127.0.0.1:9000/v1
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from openai import AsyncOpenAI


def create_app(upstream: str) -> FastAPI:
    app = FastAPI()
    client = AsyncOpenAI(base_url=upstream, api_key="bench")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> StreamingResponse:
        body: dict[str, Any] = await request.json()
        model = body.pop("model")
        messages = body.pop("messages")
        body.pop("stream", None)
        stream = await client.chat.completions.create(
            model=model, messages=messages, stream=True, extra_body=body
        )

        async def events() -> AsyncIterator[str]:
            async for chunk in stream:
                yield f"data: {chunk.model_dump_json()}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the upstream's base URL, with /v1")
    args = parser.parse_args()
    uvicorn.run(create_app(args.upstream), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()

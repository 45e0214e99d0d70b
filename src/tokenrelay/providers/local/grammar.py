"""Structured output for the embedded model: ``response_format`` as a llama.cpp grammar.

Sampling under a grammar can only pick tokens that keep the text inside it, so a reply that
ends by itself (not cut by ``max_tokens``) is JSON, and matches the schema. llama-cpp-python's
converter models types, ``properties``/``required``/``additionalProperties``, ``enum``,
``const``, ``items``/``prefixItems`` with ``minItems``/``maxItems``, ``anyOf``/``oneOf``, local
``$ref``, and strings by ``pattern`` or by ``minLength``/``maxLength``. It passes over the rest
without a word (``minimum``, ``multipleOf``, ``uniqueItems``…), which would let through replies
the schema forbids: a schema using any of those is refused, never loosened.

Runs in the worker: the converter is llama-cpp-python's, imported with it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

# Keywords that constrain values and that the converter ignores.
UNENFORCED = frozenset(
    {
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "uniqueItems",
        "contains",
        "minContains",
        "maxContains",
        "minProperties",
        "maxProperties",
        "patternProperties",
        "propertyNames",
        "dependentRequired",
        "dependentSchemas",
        "unevaluatedItems",
        "unevaluatedProperties",
        "not",
        "if",
        "then",
        "else",
        # Read as a merge of the parts' properties only: their other constraints are lost.
        "allOf",
    }
)
# Where a schema holds subschemas: by name, in a list, or as one.
_NAMED = ("properties", "$defs", "definitions")
_LISTED = ("anyOf", "oneOf", "prefixItems")
_SINGLE = ("items", "additionalProperties")


class GrammarError(ValueError):
    """A ``response_format`` the model cannot be held to."""


def grammar_of(response_format: dict[str, Any]) -> str:
    """The GBNF grammar for a ``{"type", "schema"?}`` response format."""
    schema = response_format.get("schema")
    problem = None if schema is None else next(_problems(schema, "schema"), None)
    if problem is not None:
        raise GrammarError(f"response_format {problem}, which the local model cannot be held to")
    from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

    if response_format["type"] == "json_object" or schema is None:
        # OpenAI's JSON mode: a JSON object, any keys. (JSON_GBNF's root is an object.)
        return JSON_GBNF
    try:
        grammar: str = json_schema_to_gbnf(json.dumps(schema))
    except (AssertionError, KeyError, TypeError, ValueError, RecursionError) as exc:
        message = f"response_format schema cannot be enforced by the local model: {exc}"
        raise GrammarError(message) from None
    return grammar


def _problems(schema: Any, at: str) -> Iterator[str]:
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        yield f"{at} is not a JSON Schema object"
        return
    for keyword in sorted(UNENFORCED & schema.keys()):
        yield f"{at} uses {keyword}"
    ref = schema.get("$ref")
    # The converter fetches an https:// $ref with `requests`: a request to any address a
    # client names, from the gateway's machine. Only references inside the schema pass.
    if ref is not None and not (isinstance(ref, str) and ref.startswith("#")):
        yield f"{at} has $ref {ref!r}: only local references (#/…) are supported"
    if "pattern" in schema and schema.keys() & {"minLength", "maxLength"}:
        yield f"{at} has both a pattern and a length (only one is enforced)"
    for key in _NAMED:
        named = schema.get(key)
        for name, sub in named.items() if isinstance(named, dict) else ():
            yield from _problems(sub, f"{at}.{key}.{name}")
    for key in _LISTED:
        listed = schema.get(key)
        for index, sub in enumerate(listed if isinstance(listed, list) else ()):
            yield from _problems(sub, f"{at}.{key}[{index}]")
    for key in _SINGLE:
        sub = schema.get(key)
        if isinstance(sub, list):
            for index, item in enumerate(sub):
                yield from _problems(item, f"{at}.{key}[{index}]")
        elif sub is not None:
            yield from _problems(sub, f"{at}.{key}")

"""Which JSON Schemas the embedded model's grammar can hold a reply to: the refusals, which
need no model (the conversion itself is tested with one, in test_local_structured_output)."""

from __future__ import annotations

from typing import Any

import pytest

from tokenrelay.providers.local.grammar import GrammarError, grammar_of


def _schema(schema: Any) -> dict[str, Any]:
    return {"type": "json_schema", "schema": schema}


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        ({"type": "integer", "maximum": 3}, "schema uses maximum"),
        (
            {"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}},
            "schema.properties.tags uses uniqueItems",
        ),
        (
            {"$defs": {"Point": {"type": "number", "multipleOf": 2}}, "$ref": "#/$defs/Point"},
            "schema.$defs.Point uses multipleOf",
        ),
        ({"anyOf": [{"type": "string"}, {"not": {}}]}, "schema.anyOf[1] uses not"),
        ({"type": "array", "items": {"$ref": "http://10.0.0.1/x"}}, "schema.items has $ref"),
        ({"type": "string", "pattern": "^a+$", "maxLength": 3}, "both a pattern and a length"),
        ({"allOf": [{"type": "object"}]}, "schema uses allOf"),
    ],
)
def test_a_keyword_the_grammar_would_ignore_is_refused_where_it_is(
    schema: dict[str, Any], problem: str
) -> None:
    with pytest.raises(GrammarError) as caught:
        grammar_of(_schema(schema))
    assert problem in str(caught.value)


def test_annotations_and_property_names_that_look_like_keywords_are_not_refused() -> None:
    # "minimum" here is a property's name, not the keyword; titles and descriptions annotate.
    schema = {
        "type": "object",
        "title": "Range",
        "description": "a range",
        "properties": {"minimum": {"type": "integer", "description": "the low end"}},
        "required": ["minimum"],
        "additionalProperties": False,
    }
    pytest.importorskip("llama_cpp")
    assert "minimum" in grammar_of(_schema(schema))

"""REST routes: models, conversations, keys and usage, health, the OpenAPI document."""

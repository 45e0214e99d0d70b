"""Wires: the client dialects, each a request adapter and an encoder of the same events."""

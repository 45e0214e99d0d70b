"""Wires: each encodes the same stream events for one kind of client."""

"""Stored conversations: the service that takes turns, context fitting, the reply recorder."""

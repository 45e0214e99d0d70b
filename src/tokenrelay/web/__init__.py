"""The chat page: its files and the two routes that serve them."""

"""uvicorn, tuned for long streams: the server, its HTTP protocol, and the lanes."""

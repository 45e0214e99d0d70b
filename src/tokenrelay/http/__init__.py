"""Request bodies, SSE responses and error rendering: HTTP plumbing shared by every wire."""

"""Jokko's REST API (FastAPI, versioned under /v1): the system-to-system face of the router."""

"""The FastAPI app, reconciliation, the CLI, settings and the composition root."""

"""Alembic migrations of the router's store."""

"""Routing, idempotent processing, outbox, retries, dead letters, Kafka I/O and persistence."""

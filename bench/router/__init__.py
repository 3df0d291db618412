"""Router + relay on a real broker and PostgreSQL: throughput next to a raw Kafka passthrough,
latency at a fixed offered rate, 1, 2 and 3 router processes, and a run under repeated SIGKILL.

Run: ``.venv/bin/python -m bench.router [--events 20000]``. It starts its own Kafka broker and
PostgreSQL cluster (``tests/infra.py``), publishes ``--events`` contribution events (each one
for CMU, CSS and IPRES), preceded by the enrolments of their members, to a canonical topic of
six partitions, and runs real ``jokko router`` / ``jokko relay`` processes against it, each
scenario with its own topic prefix, consumer group and database schema.
"""

"""What the benchmarks share, one module per job; a benchmark imports the module it needs.

- ``measure``: progress lines, percentiles, calls per second, a run's wall time and load average.
- ``infra``: the Kafka broker and PostgreSQL a benchmark starts, a fresh schema per scenario.
- ``workload``: canonical events (enrolments, then contributions) and what they must give.
- ``broker``: publishing a workload, reading topics back, a fresh canonical topic.
- ``deployment``: ``jokko`` processes of one scenario, and the settings reaching the fakes.
- ``cpu``: CPU each process used (/proc), to tell a CPU bound from waiting.
- ``api_client``: the bench's client of ``jokko api``: token, readiness, an open-loop offer.

Importing one module starts nothing: the broker, PostgreSQL and processes start when called.
"""

"""End to end: API submit -> accepted ack from every institution an event goes to, on a real
``jokko api`` + ``jokko router`` + ``jokko relay`` with the fake institutions (CMU and CSS over
signed HTTP, IPRES through its file exchange), offered open loop at a fixed rate.

Run: ``.venv/bin/python -m bench.flow [--rate 500] [--seconds 60] [--batch 10]``. It starts its
own Kafka broker and PostgreSQL (``bench.harness.infra``), the fakes as their own process
(``python -m tests.fakes``), and the three Jokko processes (``bench.harness.deployment``).
Members' enrolments are submitted first, untimed; then ``--rate`` contribution events a second
go to ``/v1/events/batch`` in requests of ``--batch`` events (``--batch 1``: single events to
``/v1/events``), each request sent at its scheduled time whatever the answers so far. Per
event the clock runs from that scheduled time to the ``acked_at`` of its last outbox row (the
accepted ack; CMU and CSS answer synchronously, IPRES by ack file). Writes
``bench/results/flow.json`` and ``bench/results/flow.png`` (``--name`` for another record, e.g.
the same flow below saturation: ``--rate 250 --name flow_250``).
"""

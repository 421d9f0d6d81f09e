"""Benchmarks for railgate: gateway overhead, batching gain and CPU cost against a real Triton hub.

``python -m bench.run`` (or ``make bench``) starts a real hub, the gateway, ``railgate link`` and
nginx as child processes on loopback (``devtools.devstack``), drives them with ``bench.load`` (a closed-loop generator in a
process of its own) and writes ``reports/bench/<timestamp>/``. Benchmarks print figures; they
never assert on speed.

Modules: ``stats`` (percentiles, spreads), ``procstat`` (CPU time from /proc), ``load`` (the load
generator, also ``python -m bench.load``), ``sequential`` (concurrency 1 with tritonclient),
``scenarios`` (the three measurements), ``report`` (targets, markdown, bench.json), ``plot``
(latency.png), ``run`` (the CLI), ``chaos`` and ``faults`` (fault scenarios, a misbehaving hub). ``simulator`` (the routing
simulator under virtual time, ``python -m bench.simulator``) stands apart from these.
"""

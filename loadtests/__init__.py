"""Load tests for the gateway: locust users that behave like railgate's real clients.

``locustfile.py`` (the users), ``shapes.py`` (ramp, spike, soak, east-west-day), ``payloads.py``
(request bodies in the three encodings, built once), ``stats.py`` (per-backend and per-route stats,
deadline misses), ``summary.py`` (summary.md / summary.json) and ``run.py`` (``make loadtest``:
the local stack, headless locust, the report folder). See ``docs/loadtests.md``.

Nothing here imports the gateway package except ``run.py`` (which starts the local stack), so the
locustfile runs from a plain checkout against a staging gateway.
"""

"""Fleet state: tenant rate limits, daily quotas and the usage ledger (``state:`` in the config).

- ``local.LocalState``: one process (the default). Limits live in its memory (``tenants.py``); with
  ``state.data_dir`` every answered call is billed to an embedded SQLite ledger (WAL) before its reply,
  and a restart resumes the counts from it.
- ``fleet.FleetState``: ``state.redis_url``. Limits and usage are shared by every worker and host
  through Redis (``redis_store``), leased ahead of need so that no request waits on Redis; see its
  module docstring. With ``state.host_shared`` and no Redis (``--workers N``), the same leases are
  taken from the ledger file that one host's processes share (``shared_store``).

``build.build_state`` picks one from the config. Both bill through ``ledger.CommitGroup``: one write per
group of calls answered together (a batch), committed before any of their replies is released.
"""

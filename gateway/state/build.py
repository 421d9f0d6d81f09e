"""The fleet state the config asks for: Redis when ``state.redis_url`` is set; the ledger file shared by
this host's processes with ``state.host_shared`` (``--workers N`` sets it); else this process's own."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from gateway.config import State
from gateway.metrics import Metrics
from gateway.state.ledger import SqliteLedger
from gateway.state.local import LocalState
from gateway.tenants import Tenants

if TYPE_CHECKING:
    from gateway.state.fleet import FleetState

LEDGER_FILE = "ledger.sqlite3"


def build_state(config: State, tenants: Tenants, metrics: Metrics) -> LocalState | FleetState:
    data_dir = Path(config.data_dir) if config.data_dir is not None else None
    if config.redis_url is not None:
        from gateway.state.fleet import FleetState  # redis-py loads only for a fleet

        return FleetState(tenants, config, metrics, data_dir)
    if config.host_shared and data_dir is not None and tenants.enabled:
        from gateway.state.fleet import FleetState
        from gateway.state.shared_store import SharedStore

        store = SharedStore(data_dir / LEDGER_FILE, config.sqlite_synchronous)
        return FleetState(tenants, config, metrics, None, store=store)
    ledger = None
    if data_dir is not None and tenants.enabled:
        ledger = SqliteLedger(data_dir / LEDGER_FILE, config.sqlite_synchronous)
    return LocalState(tenants, ledger)

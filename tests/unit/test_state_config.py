"""The ``state:`` section: its keys checked at start-up, and ``--workers N`` never multiplying limits."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from gateway import serving
from gateway.config import ConfigError, parse_config
from gateway.tenants import hash_key

TENANT = {"name": "acme", "keys": [hash_key("rg_acme")], "rate_per_s": 100}


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"redis_url": "http://127.0.0.1:6379"}, r"state\.redis_url: expected redis://host:port/db"),
        ({"on_outage": "panic"}, r"state\.on_outage: expected one of local, refuse"),
        ({"lease_s": 0}, r"state\.lease_s: must be > 0"),
        ({"sqlite_synchronous": "off"}, r"state\.sqlite_synchronous: expected normal or full"),
        ({"redis": "x"}, r"state\.redis"),
    ],
)
def test_bad_state_keys_are_named(state: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"state": state})


def test_a_redis_url_parses() -> None:
    config = parse_config({"state": {"redis_url": "redis://127.0.0.1:6379/0", "on_outage": "refuse"}})
    assert config.state.redis_url == "redis://127.0.0.1:6379/0" and config.state.on_outage == "refuse"


def serve_args(config: Path, workers: int) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serving.add_arguments(parser)
    return parser.parse_args(["--config", str(config), "--workers", str(workers)])


def test_workers_with_tenants_and_no_redis_refuse_to_start_naming_state_redis_url(tmp_path: Path, capsys) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"tenants": [TENANT]}))
    assert serving.run(serve_args(path, 2)) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--workers 2 with tenants" in line and "state.redis_url" in line and "state.data_dir" in line

"""Config validation: every error names the key (and the hub) and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, GatewayConfig, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]

HUB = {"name": "west-1", "url": "http://127.0.0.1:8001", "region": "west", "price_per_1k": 0.02}


def test_no_config_means_local_backend_only() -> None:
    config = load_config(None)
    assert config == GatewayConfig()
    assert config.hubs == () and config.local.enabled


def test_the_example_config_in_deploy_is_valid() -> None:
    config = load_config(ROOT / "deploy" / "railgate.yaml")
    assert [h.name for h in config.hubs]


def test_a_full_hub_entry_parses_with_types() -> None:
    config = parse_config({"hubs": [{**HUB, "carbon_g_per_kwh": 30, "protocol": "grpc"}]})
    (hub,) = config.hubs
    assert hub.price_per_1k == 0.02 and hub.carbon_g_per_kwh == 30.0 and hub.protocol == "grpc"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"hubz": []}, "hubz: unknown key"),
        ({"hubs": [{**HUB, "colour": "red"}]}, "hubs[0].colour: unknown key"),
        ({"hubs": [{**HUB, "price_per_1k": "cheap"}]}, "hubs[0].price_per_1k: expected a number"),
        ({"hubs": [{"url": "http://127.0.0.1:1"}]}, "hubs[0].name: required"),
        ({"hubs": [HUB, HUB]}, "hubs[1].name: hub 'west-1' is listed twice"),
        ({"hubs": [{**HUB, "protocol": "smtp"}]}, "hubs[0].protocol (hub west-1)"),
        ({"hubs": [{**HUB, "url": "nowhere"}]}, "hubs[0].url (hub west-1)"),
        ({"hubs": [{**HUB, "name": "local"}]}, "reserved"),
        ({"batching": {"max_batch_size": 0}}, "batching.max_batch_size: must be > 0"),
        ({"batching": {"max_queue_delay_ms": True}}, "batching.max_queue_delay_ms: expected a number"),
        ({"listen": {"port": "80"}}, "listen.port: expected an integer"),
        ({"listen": {"backlog": 0}}, "listen.backlog: expected 1..65535, got 0"),
        ({"local": {"enabled": "yes"}}, "local.enabled: expected true or false"),
        ({"local": {"models": "digits"}}, "local.models: expected a list"),
        ({"local": {"enabled": False}}, "nothing could serve"),
        ({"local": {"inline_max_ms": -1}}, "local.inline_max_ms: must be >= 0"),
        ({"routing": {"tail_quantile": 1.5}}, "routing.tail_quantile: must be within 0..1"),
        ({"routing": {"rescue_quantile": 1.0}}, "routing.rescue_quantile: must be within 0..1 (1 excluded)"),
        ({"routing": {"tail_window": 0}}, "routing.tail_window: must be > 0"),
        ({"routing": {"tail_margin_ms": -1}}, "routing.tail_margin_ms: must be >= 0"),
        ([1, 2], "config: expected a mapping"),
    ],
)
def test_bad_config_names_the_key(raw: object, message: str) -> None:
    with pytest.raises(
        ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")
    ):
        parse_config(raw)


def test_unreadable_and_malformed_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("hubs: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)

"""The load test's knobs, read once from the environment (and ``--shape`` on locust's command line).

Environment variables are the interface because locust decides which user classes and which
load shape exist when it imports the locustfile, before it parses its own arguments; ``run.py``
sets the same variables for the locust process it starts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

SHAPE_NAMES = ("none", "ramp", "spike", "soak", "east-west-day")


class SettingsError(ValueError):
    """An environment variable has a value the load test cannot use; the message names it."""


@dataclass(frozen=True, slots=True)
class Settings:
    """What the users and the shape need to know, with the variable each comes from."""

    weight_app: float = 3.0  # RAILGATE_WEIGHT_APP: application back ends (v2 JSON, binary tensors)
    weight_edge: float = 6.0  # RAILGATE_WEIGHT_EDGE: edge devices (msgpack, tight budgets)
    weight_triton: float = 1.0  # RAILGATE_WEIGHT_TRITON: services using tritonclient.http
    shape: str = "none"  # RAILGATE_SHAPE or --shape: none | ramp | spike | soak | east-west-day
    shape_scale: float = 1.0  # RAILGATE_SHAPE_SCALE: multiplies every duration of the shape
    edge_budgets_ms: tuple[float, ...] = (10.0, 25.0, 50.0)  # RAILGATE_EDGE_BUDGETS_MS, per device
    edge_period_s: float = 0.25  # RAILGATE_EDGE_PERIOD_S: one reading per device per period
    app_budget_ms: float = 250.0  # RAILGATE_APP_BUDGET_MS: interactive app requests (0: none)
    seed: int = 0  # RAILGATE_SEED: payload contents

    def weights(self) -> dict[str, float]:
        return {"AppClient": self.weight_app, "EdgeDevice": self.weight_edge, "TritonClientUser": self.weight_triton}


def read_settings(environ: Mapping[str, str] | None = None, argv: Sequence[str] = ()) -> Settings:
    """Settings from ``environ`` (default ``os.environ``); a ``--shape`` in ``argv`` beats RAILGATE_SHAPE."""
    env = os.environ if environ is None else environ
    defaults = Settings()
    shape = _argv_option(argv, "--shape") or env.get("RAILGATE_SHAPE") or defaults.shape
    if shape not in SHAPE_NAMES:
        raise SettingsError(f"shape {shape!r} is unknown; expected one of {', '.join(SHAPE_NAMES)}")
    settings = Settings(
        weight_app=_number(env, "RAILGATE_WEIGHT_APP", defaults.weight_app, minimum=0),
        weight_edge=_number(env, "RAILGATE_WEIGHT_EDGE", defaults.weight_edge, minimum=0),
        weight_triton=_number(env, "RAILGATE_WEIGHT_TRITON", defaults.weight_triton, minimum=0),
        shape=shape,
        shape_scale=_number(env, "RAILGATE_SHAPE_SCALE", defaults.shape_scale, minimum=1e-3),
        edge_budgets_ms=_budgets(env, "RAILGATE_EDGE_BUDGETS_MS", defaults.edge_budgets_ms),
        edge_period_s=_number(env, "RAILGATE_EDGE_PERIOD_S", defaults.edge_period_s, minimum=0),
        app_budget_ms=_number(env, "RAILGATE_APP_BUDGET_MS", defaults.app_budget_ms, minimum=0),
        seed=int(_number(env, "RAILGATE_SEED", defaults.seed, minimum=0)),
    )
    if not any(settings.weights().values()):
        raise SettingsError("RAILGATE_WEIGHT_APP, _EDGE and _TRITON are all 0: no user class would run")
    return settings


def _argv_option(argv: Sequence[str], flag: str) -> str | None:
    """The value of ``flag`` in ``argv`` (``--flag v`` or ``--flag=v``), the last one winning."""
    value = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def _number(env: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if not value >= minimum:
        raise SettingsError(f"{name} must be >= {minimum:g}, got {raw!r}")
    return value


def _budgets(env: Mapping[str, str], name: str, default: tuple[float, ...]) -> tuple[float, ...]:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        budgets = tuple(float(part) for part in raw.split(",") if part.strip())
    except ValueError:
        raise SettingsError(f"{name} must be comma-separated milliseconds (e.g. 10,25,50), got {raw!r}") from None
    if not budgets or any(not b > 0 for b in budgets):
        raise SettingsError(f"{name} must list budgets > 0 ms, got {raw!r}")
    return budgets

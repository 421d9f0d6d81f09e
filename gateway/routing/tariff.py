"""Prices as an electricity tariff: a base price, per-model prices, and time-of-day windows."""

from __future__ import annotations

from functools import lru_cache

from gateway.config import HubSpec


@lru_cache(maxsize=1024)  # the config's few "HH:MM" strings, parsed once instead of per batch and hub
def minute_of_day(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


def price_now(hub: HubSpec, model: str, minute: int) -> float:
    """Price per 1,000 inferences of ``model`` on ``hub`` at ``minute`` past midnight.

    A per-model price wins at any time; otherwise the first tariff window containing ``minute``
    (windows may wrap midnight: 22:00-06:00); otherwise the hub's base price.
    """
    if not hub.model_prices and not hub.tariff:
        return hub.price_per_1k
    for entry in hub.model_prices:
        if entry.model == model:
            return entry.price_per_1k
    for window in hub.tariff:
        start, end = minute_of_day(window.from_), minute_of_day(window.to)
        inside = start <= minute < end if start < end else (minute >= start or minute < end)
        if inside:
            return window.price_per_1k
    return hub.price_per_1k

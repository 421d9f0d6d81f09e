"""aiohttp tries the routes under one static prefix in the order they were added, one regex each, on
every request: the infer routes, hit by nearly every request, must be the first under /v2/models."""

from __future__ import annotations

from pathlib import Path

from gateway.config import GatewayConfig, Local
from gateway.fronts.http import create_app


def test_the_infer_routes_are_tried_first_under_v2_models(repository: Path) -> None:
    app = create_app(GatewayConfig(local=Local(repository=str(repository), models=("digits",))))
    dynamic = [
        r for r in app.router.routes() if r.resource is not None and r.resource.canonical.startswith("/v2/models/{")
    ]
    assert [(r.method, r.resource.canonical) for r in dynamic[:2]] == [
        ("POST", "/v2/models/{model}/infer"),
        ("POST", "/v2/models/{model}/versions/{version}/infer"),
    ]
    assert len(dynamic) > 2, "the other model routes are still there"

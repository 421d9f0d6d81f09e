"""``GET /openapi.json`` builds its document once per catalog, not once per request."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway import openapi
from railcore.catalog import ModelInfo, TensorMeta

DIGITS = ModelInfo("digits", ("1",), "onnx", (TensorMeta("pixels", "FP32", (-1, 64)),),
                   (TensorMeta("label", "INT64", (-1, 1)),), 64)  # fmt: skip
VOCAB = ModelInfo("vocab", ("1",), "onnx", (TensorMeta("word", "BYTES", (-1, 1)),),
                  (TensorMeta("word_id", "INT64", (-1, 1)),), 64)  # fmt: skip


async def test_the_document_is_rebuilt_only_when_the_catalog_changes(aiohttp_client, monkeypatch):
    built: list[tuple[str, ...]] = []
    document = openapi.openapi_document

    def counted(models: Any = None, **kwargs: Any) -> dict[str, Any]:
        built.append(tuple(models or ()))
        return document(models, **kwargs)

    monkeypatch.setattr(openapi, "openapi_document", counted)
    catalog: dict[str, ModelInfo] = {"digits": DIGITS}
    app = web.Application()
    app.router.add_get("/openapi.json", openapi.openapi_route(lambda: catalog))
    client = await aiohttp_client(app)
    bodies = [await (await client.get("/openapi.json")).read() for _ in range(3)]
    assert built == [("digits",)] and len(set(bodies)) == 1
    catalog = {"digits": DIGITS, "vocab": VOCAB}  # Router.rebuild_catalog rebinds it (reload, discovery)
    reply = await (await client.get("/openapi.json")).json()
    assert reply["components"]["parameters"]["model"]["schema"]["enum"] == ["digits", "vocab"]
    await client.get("/openapi.json")
    assert built == [("digits",), ("digits", "vocab")]

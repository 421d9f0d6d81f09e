"""Compressed request bodies (``Content-Encoding: gzip`` / ``deflate``, as ``tritonclient.http``
sends with ``request_compression_algorithm``): the limit applies to the inflated body."""

from __future__ import annotations

import dataclasses
import gzip
import json
import zlib
from pathlib import Path

import pytest

from gateway.config import GatewayConfig, Limits, Local
from gateway.fronts.http import create_app

PIXELS = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [1.0] * 64}]}


@pytest.fixture
async def client(aiohttp_client, repository: Path):
    config = GatewayConfig(local=Local(repository=str(repository), models=("digits",)))
    config = dataclasses.replace(config, limits=dataclasses.replace(Limits(), max_json_body_bytes=64 * 1024))
    return await aiohttp_client(create_app(config))


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_compressed_body_longer_inflated_than_its_content_length_is_served(client, encoding: str):
    raw = json.dumps(PIXELS).encode()
    body = gzip.compress(raw) if encoding == "gzip" else zlib.compress(raw)
    assert len(body) < len(raw) / 4
    reply = await client.post(
        "/v2/models/digits/infer",
        data=body,
        headers={"Content-Type": "application/json", "Content-Encoding": encoding},
    )
    assert reply.status == 200, await reply.text()
    assert len((await reply.json())["outputs"]) == 2


async def test_a_compressed_body_that_inflates_past_the_limit_is_413_naming_it(client):
    bomb = gzip.compress(b" " * (1024 * 1024))  # 1 MiB of spaces in ~1 KiB
    reply = await client.post(
        "/v2/models/digits/infer",
        data=bomb,
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert reply.status == 413
    assert "limits.max_json_body_bytes" in (await reply.json())["error"]


async def test_a_compressed_binary_body_whose_header_length_exceeds_its_content_length_is_served(client):
    """tritonclient's binary extension with compression: the header length counts inflated bytes."""
    tensor = {"name": "pixels", "datatype": "FP32", "shape": [1, 64], "parameters": {"binary_data_size": 256}}
    header = json.dumps({"id": "r" * 2000, "inputs": [tensor]}).encode()  # a long id compresses well
    body = gzip.compress(header + bytes(256))
    assert len(body) < len(header)
    reply = await client.post(
        "/v2/models/digits/infer",
        data=body,
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Encoding": "gzip",
            "Inference-Header-Content-Length": str(len(header)),
        },
    )
    assert reply.status == 200, await reply.text()

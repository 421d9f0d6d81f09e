"""Model sync between a real aiohttp server running ``gateway.artifacts`` and the edge: hashes, signatures,
atomic writes."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import sys
import threading
from pathlib import Path

import aiohttp
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from edge import EdgeRuntime, ModelRefused, parse_edge_config
from edge.store import ModelStore
from edge.sync import sync_models, sync_once
from gateway.artifacts import add_routes
from gateway.config import Artifacts, GatewayConfig, Local, TenantSpec
from gateway.fronts.http import create_app
from gateway.tenants import hash_key, new_key
from railcore.errors import BadRequest
from railcore.signing import (
    KEY_ID_HEADER,
    SIGNATURE_HEADER,
    ManifestFile,
    ModelManifest,
    SigningKey,
    TrustedKeys,
    verify_signature,
)
from tests.samples import assert_same_outputs, copy_repository, sample_inputs

ROOT = Path(__file__).resolve().parents[2]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_model(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs), strict=True))


def retrained(path: Path) -> bytes:
    """A model that loads and answers differently: the file's first weight matrix negated."""
    proto = onnx.load(str(path))
    weights = next(t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2)
    array = -onnx.numpy_helper.to_array(weights)
    weights.CopyFrom(onnx.numpy_helper.from_array(array.astype(np.float32), weights.name))
    return proto.SerializeToString()


def publish_new_version(repo: Path, model: str = "digits") -> str:
    """Retrain, as far as the edge can tell: negate the first weight matrix, record the new hash in the manifest."""
    path = repo / model / "1" / "model.onnx"
    path.write_bytes(retrained(path))
    manifest = json.loads((repo / "manifest.json").read_text())
    manifest["models"][model]["sha256"] = sha256(path)
    (repo / "manifest.json").write_text(json.dumps(manifest))
    return sha256(path)


def part_files(root: Path) -> list[Path]:
    return list(root.glob("**/.*.part"))


@pytest.fixture
def gateway_repo(repository: Path, tmp_path: Path) -> Path:
    return copy_repository(repository, tmp_path / "gateway", ("digits", "anomaly", "vision"))


@pytest.fixture(scope="module")
def gateway_key() -> SigningKey:
    return SigningKey.generate()


async def start(app: web.Application) -> TestServer:
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


async def artifact_server(
    repo: Path, exportable: tuple[str, ...] = ("digits", "anomaly"), signer: SigningKey | None = None
) -> TestServer:
    app = web.Application()
    add_routes(app, repo, exportable, signer=signer)
    return await start(app)


async def man_in_the_middle(gateway: TestServer, onnx_bytes: bytes) -> TestServer:
    """A proxy that serves ``onnx_bytes`` as the model file and rewrites the manifest's hash and size to match,
    passing the gateway's signature on untouched (it cannot sign the new bytes)."""
    forged = ManifestFile("1/model.onnx", hashlib.sha256(onnx_bytes).hexdigest(), len(onnx_bytes))

    async def upstream(request: web.Request) -> tuple[bytes, dict[str, str]]:
        async with aiohttp.ClientSession() as http, http.get(gateway.make_url(request.path)) as reply:
            return await reply.read(), dict(reply.headers)

    async def manifest(request: web.Request) -> web.Response:
        body, headers = await upstream(request)
        genuine = ModelManifest.from_bytes(body)
        files = tuple(forged if f.name == forged.name else f for f in genuine.files)
        signature = {k: headers[k] for k in (SIGNATURE_HEADER, KEY_ID_HEADER) if k in headers}
        return web.Response(body=dataclasses.replace(genuine, files=files).to_bytes(), headers=signature)

    async def artifact(request: web.Request) -> web.Response:
        return web.Response(body=onnx_bytes, headers={"X-Model-Sha256": forged.sha256, "X-Model-Version": "1"})

    async def config(request: web.Request) -> web.Response:
        body, headers = await upstream(request)
        return web.Response(body=body, headers={"X-Config-Sha256": headers["X-Config-Sha256"]})

    app = web.Application()
    app.router.add_get("/v1/models/{model}/manifest", manifest)
    app.router.add_get("/v1/models/{model}/artifact", artifact)
    app.router.add_get("/v1/models/{model}/config.pbtxt", config)
    return await start(app)


def edge_config(edge_repo: Path, url: str, trusted: tuple[SigningKey, ...] = (), **overrides):
    raw = {
        "repository": str(edge_repo),
        "gateway_url": url,
        "models": ["digits"],
        "probe_interval_s": 0,
        "sync": {"interval_s": 0, "trusted_keys": [k.public_text() for k in trusted]},
        "policy": "local",
    }
    return parse_edge_config({**raw, **overrides})


def refusals(rt: EdgeRuntime, reason: str) -> float | None:
    return rt.metrics.registry.get_sample_value(
        "railgate_edge_sync_refusals_total", {"model": "digits", "reason": reason}
    )


async def test_artifacts_are_served_with_the_manifest_hash_and_honour_if_none_match(gateway_repo: Path) -> None:
    server = await artifact_server(gateway_repo)
    onnx_path = gateway_repo / "digits" / "1" / "model.onnx"
    recorded = json.loads((gateway_repo / "manifest.json").read_text())["models"]["digits"]["sha256"]
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(server.make_url("/v1/models/digits/artifact")) as reply:
                assert reply.status == 200 and await reply.read() == onnx_path.read_bytes()
                assert reply.headers["ETag"] == f'"{recorded}"' and reply.headers["X-Model-Sha256"] == recorded
                assert reply.headers["X-Model-Version"] == "1"
            headers = {"If-None-Match": f'"{recorded}"'}
            async with http.get(server.make_url("/v1/models/digits/artifact"), headers=headers) as reply:
                assert reply.status == 304 and await reply.read() == b""
            async with http.head(server.make_url("/v1/models/digits/artifact")) as reply:
                assert reply.status == 200 and int(reply.headers["Content-Length"]) == onnx_path.stat().st_size
            async with http.get(server.make_url("/v1/models/digits/config.pbtxt")) as reply:
                config = await reply.read()
                assert config == (gateway_repo / "digits" / "config.pbtxt").read_bytes()
                assert reply.headers["ETag"] == f'"{hashlib.sha256(config).hexdigest()}"'
            for model, why in [("vision", "is not exportable"), ("nope", "is not exportable")]:
                for route in ("artifact", "config.pbtxt"):
                    async with http.get(server.make_url(f"/v1/models/{model}/{route}")) as reply:
                        assert reply.status == 404 and why in (await reply.json())["error"]
    finally:
        await server.close()


async def test_the_runtime_syncs_at_start_up_and_serves_the_verified_copy(gateway_repo: Path, tmp_path: Path) -> None:
    edge_repo = tmp_path / "edge"
    server = await artifact_server(gateway_repo)
    try:
        async with EdgeRuntime(edge_config(edge_repo, str(server.make_url("")))) as rt:
            source = gateway_repo / "digits" / "1" / "model.onnx"
            assert rt.local_models()["digits"].sha256 == sha256(source)
            assert (edge_repo / "digits" / "1" / "model.onnx").read_bytes() == source.read_bytes()
            assert (edge_repo / "digits" / "config.pbtxt").is_file() and not part_files(edge_repo)
            entry = json.loads((edge_repo / "manifest.json").read_text())["models"]["digits"]
            assert entry["sha256"] == sha256(source) and entry["file"] == "digits/1/model.onnx"
            inputs = sample_inputs("digits", batch=2, seed=1)
            result = await rt.infer("digits", inputs)
            assert result.served_by == "local"
            assert_same_outputs(result.outputs, run_model(source, inputs))
            assert [o.outcome for o in await rt.sync_now()] == ["current"]  # If-None-Match: nothing downloaded
    finally:
        await server.close()


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "hash-only"])
async def test_a_tampered_artifact_is_refused_and_the_old_version_keeps_serving(
    gateway_repo: Path, tmp_path: Path, gateway_key: SigningKey, signed: bool
) -> None:
    edge_repo = tmp_path / "edge"
    keys = (gateway_key,) if signed else ()
    server = await artifact_server(gateway_repo, signer=gateway_key if signed else None)
    source = gateway_repo / "digits" / "1" / "model.onnx"
    good = source.read_bytes()
    inputs = sample_inputs("digits", batch=1, seed=2)
    try:
        async with EdgeRuntime(edge_config(edge_repo, str(server.make_url("")), keys)) as rt:
            before = (await rt.infer("digits", inputs)).outputs
            publish_new_version(gateway_repo)
            source.write_bytes(source.read_bytes()[:-1] + b"\x01")  # the file no longer matches the manifest
            (outcome,) = await rt.sync_now()
            assert outcome.outcome == "refused" and "its manifest says" in outcome.detail
            assert rt.local_models()["digits"].sha256 == hashlib.sha256(good).hexdigest()
            assert (edge_repo / "digits" / "1" / "model.onnx").read_bytes() == good and not part_files(edge_repo)
            assert_same_outputs((await rt.infer("digits", inputs)).outputs, before)
            assert rt.metrics.registry.get_sample_value(
                "railgate_edge_syncs_total", {"model": "digits", "outcome": "refused"}
            )
            assert refusals(rt, "hash_mismatch") == 1
    finally:
        await server.close()


@pytest.mark.parametrize("pinned", [True, False], ids=["pinned-key-refuses", "no-keys-hash-only"])
async def test_a_file_and_its_manifest_tampered_together_fail_the_signature(
    gateway_repo: Path, tmp_path: Path, gateway_key: SigningKey, pinned: bool
) -> None:
    """The hash the device checks now travels in a signed manifest: rewriting both on the way is caught by a
    device that pins the gateway's key; one that pins none can only check the hash, which the forger rewrote."""
    edge_repo = copy_repository(gateway_repo, tmp_path / "edge", ("digits",))
    good = (edge_repo / "digits" / "1" / "model.onnx").read_bytes()
    forged = retrained(gateway_repo / "digits" / "1" / "model.onnx")
    gateway = await artifact_server(gateway_repo, signer=gateway_key)
    proxy = await man_in_the_middle(gateway, forged)
    inputs = sample_inputs("digits", batch=1, seed=4)
    keys = (gateway_key,) if pinned else ()
    try:
        async with EdgeRuntime(edge_config(edge_repo, str(proxy.make_url("")), keys)) as rt:  # syncs at start-up
            served = (await rt.infer("digits", inputs)).outputs
            if pinned:
                assert rt.local_models()["digits"].sha256 == hashlib.sha256(good).hexdigest()
                assert (edge_repo / "digits" / "1" / "model.onnx").read_bytes() == good
                assert_same_outputs(served, run_model(edge_repo / "digits" / "1" / "model.onnx", inputs))
                assert refusals(rt, "bad_signature") == 1
                (again,) = await rt.sync_now()
                assert (again.outcome, again.reason) == ("refused", "bad_signature")
                assert "does not match its bytes" in again.detail
            else:
                assert rt.local_models()["digits"].sha256 == hashlib.sha256(forged).hexdigest()
    finally:
        await proxy.close()
        await gateway.close()


@pytest.mark.parametrize("signing", ["stranger", "unsigned"])
async def test_an_update_not_signed_by_a_pinned_key_is_refused_and_the_old_version_keeps_serving(
    gateway_repo: Path, tmp_path: Path, gateway_key: SigningKey, signing: str
) -> None:
    edge_repo = copy_repository(gateway_repo, tmp_path / "edge", ("digits",))
    good = (edge_repo / "digits" / "1" / "model.onnx").read_bytes()
    publish_new_version(gateway_repo)
    stranger = SigningKey.generate() if signing == "stranger" else None
    server = await artifact_server(gateway_repo, signer=stranger)
    inputs = sample_inputs("digits", batch=1, seed=5)
    try:
        async with EdgeRuntime(edge_config(edge_repo, str(server.make_url("")), (gateway_key,))) as rt:
            (outcome,) = await rt.sync_now()
            reason = "untrusted_key" if stranger else "unsigned"
            assert (outcome.outcome, outcome.reason) == ("refused", reason)
            assert outcome.detail.endswith("kept the current version")
            if stranger:
                assert stranger.key_id in outcome.detail and gateway_key.key_id in outcome.detail
            assert rt.local_models()["digits"].sha256 == hashlib.sha256(good).hexdigest()
            assert_same_outputs(
                (await rt.infer("digits", inputs)).outputs, run_model(edge_repo / "digits" / "1" / "model.onnx", inputs)
            )
            assert refusals(rt, reason) == 2  # at start-up, and now
    finally:
        await server.close()


async def test_a_model_first_seen_unsigned_is_never_run_by_a_device_that_pins_keys(
    gateway_repo: Path, tmp_path: Path, gateway_key: SigningKey
) -> None:
    server = await artifact_server(gateway_repo)
    try:
        async with EdgeRuntime(edge_config(tmp_path / "edge", str(server.make_url("")), (gateway_key,))) as rt:
            assert rt.local_models() == {}
            with pytest.raises(ModelRefused, match="last sync refused: the manifest is unsigned"):
                await rt.infer("digits", sample_inputs("digits", batch=1))
        assert not (tmp_path / "edge" / "digits" / "1" / "model.onnx").exists()
    finally:
        await server.close()


async def test_a_signed_update_installs_and_the_device_records_its_signer(
    gateway_repo: Path, tmp_path: Path, gateway_key: SigningKey
) -> None:
    edge_repo = tmp_path / "edge"
    server = await artifact_server(gateway_repo, signer=gateway_key)
    source = gateway_repo / "digits" / "1" / "model.onnx"
    inputs = sample_inputs("digits", batch=1, seed=6)
    try:
        async with EdgeRuntime(edge_config(edge_repo, str(server.make_url("")), (gateway_key,))) as rt:
            new_sha = publish_new_version(gateway_repo)
            (outcome,) = await rt.sync_now()
            assert (outcome.outcome, outcome.sha256, outcome.signed_by) == ("updated", new_sha, gateway_key.key_id)
            assert f"signed_by={gateway_key.key_id}" in outcome.line()
            assert rt.local_models()["digits"].sha256 == new_sha
            assert_same_outputs((await rt.infer("digits", inputs)).outputs, run_model(source, inputs))
            entry = json.loads((edge_repo / "manifest.json").read_text())["models"]["digits"]
            assert (entry["sha256"], entry["signed_by"]) == (new_sha, gateway_key.key_id)
            assert [o.outcome for o in await rt.sync_now()] == ["current"]
    finally:
        await server.close()


async def test_both_pinned_keys_are_accepted_during_a_rotation(gateway_repo: Path, tmp_path: Path) -> None:
    """The device pins the old key and the new one; the gateway moves from one to the other between syncs."""
    old, new = SigningKey.generate(), SigningKey.generate()
    trusted = TrustedKeys.parse([old.public_text(), new.public_bytes.hex()])  # base64 and hex spellings
    store = ModelStore(tmp_path / "edge")
    for signer in (old, new):
        sha = publish_new_version(gateway_repo)
        server = await artifact_server(gateway_repo, signer=signer)
        try:
            async with aiohttp.ClientSession() as http:
                (outcome,) = await sync_models(http, str(server.make_url("")), store, ("digits",), trusted=trusted)
        finally:
            await server.close()
        assert (outcome.outcome, outcome.sha256, outcome.signed_by) == ("updated", sha, signer.key_id)
        assert store.load("digits").sha256 == sha


async def test_the_manifest_is_served_signed_over_its_exact_bytes(gateway_repo: Path, gateway_key: SigningKey) -> None:
    server = await artifact_server(gateway_repo, signer=gateway_key)
    unsigned = await artifact_server(gateway_repo)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(server.make_url("/v1/models/digits/manifest")) as reply:
                body, headers = await reply.read(), reply.headers
            async with http.get(unsigned.make_url("/v1/models/digits/manifest")) as reply:
                assert await reply.read() == body and SIGNATURE_HEADER not in reply.headers
            async with http.get(server.make_url("/v1/models/vision/manifest")) as reply:
                assert reply.status == 404 and "is not exportable" in (await reply.json())["error"]
        assert headers[KEY_ID_HEADER] == gateway_key.key_id
        signature = base64.b64decode(headers[SIGNATURE_HEADER])
        assert verify_signature(gateway_key.public_bytes, body, signature)
        manifest = ModelManifest.from_bytes(body)
        onnx_path, config_path = gateway_repo / "digits" / "1" / "model.onnx", gateway_repo / "digits" / "config.pbtxt"
        assert (manifest.model, manifest.version) == ("digits", "1")
        assert manifest.files == (
            ManifestFile("1/model.onnx", sha256(onnx_path), onnx_path.stat().st_size),
            ManifestFile("config.pbtxt", sha256(config_path), config_path.stat().st_size),
        )
    finally:
        await server.close()
        await unsigned.close()


async def test_a_model_first_seen_tampered_is_never_run(gateway_repo: Path, tmp_path: Path) -> None:
    source = gateway_repo / "digits" / "1" / "model.onnx"
    source.write_bytes(source.read_bytes() + b"\0")
    server = await artifact_server(gateway_repo)
    try:
        async with EdgeRuntime(edge_config(tmp_path / "edge", str(server.make_url("")))) as rt:
            assert rt.local_models() == {}
            with pytest.raises(ModelRefused, match="last sync refused: downloaded artifact has sha256"):
                await rt.infer("digits", sample_inputs("digits", batch=1))
        assert not (tmp_path / "edge" / "digits" / "1" / "model.onnx").exists()
    finally:
        await server.close()


async def test_a_new_version_is_swapped_in_once_loaded_while_calls_keep_succeeding(
    gateway_repo: Path, tmp_path: Path
) -> None:
    edge_repo = tmp_path / "edge"
    server = await artifact_server(gateway_repo)
    source = gateway_repo / "digits" / "1" / "model.onnx"
    inputs = sample_inputs("digits", batch=1, seed=3)
    old = run_model(source, inputs)
    try:
        async with EdgeRuntime(edge_config(edge_repo, str(server.make_url("")))) as rt:
            new_sha = publish_new_version(gateway_repo)
            new = run_model(source, inputs)
            assert not np.array_equal(old["label"], new["label"])
            answers: list[dict[str, np.ndarray]] = []
            stop = threading.Event()

            def caller() -> None:  # firmware calling throughout the sync
                while not stop.is_set():
                    answers.append(rt.infer_sync("digits", inputs).outputs)

            thread = threading.Thread(target=caller)
            thread.start()
            try:
                (outcome,) = await rt.sync_now()
            finally:
                stop.set()
                await asyncio.to_thread(thread.join, 10)
            assert (outcome.outcome, outcome.sha256) == ("updated", new_sha)
            assert rt.local_models()["digits"].sha256 == new_sha
            labels = {int(a["label"][0, 0]) for a in answers}
            assert answers and labels <= {int(old["label"][0, 0]), int(new["label"][0, 0])}
            assert_same_outputs((await rt.infer("digits", inputs)).outputs, new)
        async with EdgeRuntime(edge_config(edge_repo, str(server.make_url("")), sync={"enabled": False})) as rt:
            assert rt.local_models()["digits"].sha256 == new_sha  # what was committed loads after a restart
    finally:
        await server.close()


async def test_a_changed_config_alone_is_synced_and_swapped_in(gateway_repo: Path, tmp_path: Path) -> None:
    edge_repo = tmp_path / "edge"
    server = await artifact_server(gateway_repo)
    config = gateway_repo / "digits" / "config.pbtxt"
    try:
        async with EdgeRuntime(edge_config(edge_repo, str(server.make_url("")))) as rt:
            assert rt.local_models()["digits"].info.max_batch_size == 256
            config.write_text(config.read_text().replace("max_batch_size: 256", "max_batch_size: 8"))
            (outcome,) = await rt.sync_now()
            assert (outcome.outcome, outcome.detail) == ("updated", "config.pbtxt only")
            assert rt.local_models()["digits"].info.max_batch_size == 8
            assert (edge_repo / "digits" / "config.pbtxt").read_bytes() == config.read_bytes()
            entry = json.loads((edge_repo / "manifest.json").read_text())["models"]["digits"]
            assert entry["config_sha256"] == sha256(config)
            with pytest.raises(BadRequest, match=r"batch size 9 outside 1\.\.8"):
                await rt.infer("digits", sample_inputs("digits", batch=9))
    finally:
        await server.close()


async def test_an_interrupted_download_never_leaves_a_half_file_in_use(gateway_repo: Path, tmp_path: Path) -> None:
    edge_repo = copy_repository(gateway_repo, tmp_path / "edge", ("digits",))
    store = ModelStore(edge_repo)
    stale = edge_repo / "digits" / "1" / ".model.onnx.1.dead.part"
    stale.write_bytes(b"left by a crash")
    new_sha = publish_new_version(gateway_repo)
    data = (gateway_repo / "digits" / "1" / "model.onnx").read_bytes()

    async def cut_short(request: web.Request) -> web.StreamResponse:
        reply = web.StreamResponse(headers={"ETag": f'"{new_sha}"', "X-Model-Version": "1"})
        reply.content_length = len(data)
        await reply.prepare(request)
        await reply.write(data[: len(data) // 2])
        assert request.transport is not None
        request.transport.close()  # the backbone drops mid-download
        return reply

    config = (gateway_repo / "digits" / "config.pbtxt").read_bytes()
    files = (
        ManifestFile("1/model.onnx", new_sha, len(data)),
        ManifestFile("config.pbtxt", hashlib.sha256(config).hexdigest(), len(config)),
    )

    async def manifest(request: web.Request) -> web.Response:
        return web.Response(body=ModelManifest("digits", "1", files).to_bytes())

    app = web.Application()
    app.router.add_get("/v1/models/{model}/manifest", manifest)
    app.router.add_get("/v1/models/{model}/artifact", cut_short)
    server = await start(app)
    try:
        async with aiohttp.ClientSession() as http:
            (outcome,) = await sync_models(http, str(server.make_url("")), store, ("digits",), timeout_s=5)
        assert outcome.outcome == "failed" and "ClientPayloadError" in outcome.detail
        assert store.load("digits").sha256 == sha256(ROOT / "models" / "repository" / "digits" / "1" / "model.onnx")
        assert not part_files(edge_repo)  # neither this download's nor the crashed one's
    finally:
        await server.close()


async def test_a_second_writer_is_refused_while_a_sync_runs(gateway_repo: Path, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "edge")
    with store.writing():
        async with aiohttp.ClientSession() as http:
            (outcome,) = await sync_models(http, "http://127.0.0.1:9", store, ("digits",))
    assert outcome.outcome == "failed" and "another sync is writing" in outcome.detail


async def test_railgate_edge_sync_pulls_the_configured_models(gateway_repo: Path, tmp_path: Path) -> None:
    server = await artifact_server(gateway_repo)
    edge_repo = tmp_path / "edge"
    config = tmp_path / "edge.yaml"
    url = str(server.make_url("")).rstrip("/")
    config.write_text(
        yaml.safe_dump({"gateway_url": url, "repository": str(edge_repo), "models": ["digits", "anomaly"]})
    )
    try:
        for expected in ("updated", "current"):
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "edge.server", "sync", "--config", str(config), cwd=ROOT,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(process.communicate(), 60)
            assert process.returncode == 0, err.decode()
            lines = out.decode().splitlines()
            assert [line.split()[:2] for line in lines] == [["digits", expected], ["anomaly", expected]]
            # A line per model as it is done, on stderr (a log line may sit between them).
            progress = [line for line in err.decode().splitlines() if line.startswith("edge sync")]
            assert [line.split("  ")[:2] for line in progress[:2]] == [
                ["edge sync 1/2 (50%)", f"digits {expected}"],
                ["edge sync 2/2 (100%)", f"anomaly {expected}"],
            ]
            assert progress[2].startswith("edge sync done: 2/2 in ")
        assert ModelStore(edge_repo).load("anomaly").sha256 == sha256(gateway_repo / "anomaly" / "1" / "model.onnx")
        outcomes = await sync_once(url, edge_repo, ("vision",), 5)
        assert outcomes[0].outcome == "failed" and "not exportable" in outcomes[0].detail
    finally:
        await server.close()


async def test_a_sync_leaves_nothing_but_model_files_in_the_repository(gateway_repo: Path, tmp_path: Path) -> None:
    """The repository is the gateway's build output: runtime state (the writers' lock) stays out of it."""
    server = await artifact_server(gateway_repo)
    edge_repo = tmp_path / "edge"
    try:
        outcomes = await sync_once(str(server.make_url("")).rstrip("/"), edge_repo, ("digits",), 5)
        assert [o.outcome for o in outcomes] == ["updated"]
    finally:
        await server.close()
    files = sorted(str(p.relative_to(edge_repo)) for p in edge_repo.rglob("*") if p.is_file())
    assert files == ["digits/1/model.onnx", "digits/config.pbtxt", "manifest.json"]


async def test_the_gateway_signs_with_the_key_file_its_config_names(
    aiohttp_client, gateway_repo: Path, tmp_path: Path, gateway_key: SigningKey
) -> None:
    """The real app: ``artifacts.signing_key_file`` reaches the manifest route, which keeps the artifacts' access."""
    (tmp_path / "signing.pem").write_bytes(gateway_key.private_pem())
    acme = new_key()
    config = GatewayConfig(
        local=Local(repository=str(gateway_repo), models=("digits", "vision")),
        artifacts=Artifacts(exportable=("digits", "vision"), signing_key_file=str(tmp_path / "signing.pem")),
        tenants=(TenantSpec("acme", keys=(hash_key(acme),), models=("digits",)),),
    )
    client = await aiohttp_client(create_app(config))
    headers = {"Authorization": f"Bearer {acme}"}
    async with client.get("/v1/models/digits/manifest", headers=headers) as reply:
        assert reply.status == 200
        body, signature = await reply.read(), reply.headers[SIGNATURE_HEADER]
    assert TrustedKeys.parse([gateway_key.public_text()]).verify(body, reply.headers[KEY_ID_HEADER], signature)
    for path, key, status in [("/v1/models/digits/manifest", None, 401), ("/v1/models/vision/manifest", acme, 403)]:
        async with client.get(path, headers={"Authorization": f"Bearer {key}"} if key else {}) as reply:
            assert reply.status == status

"""The gateway's HTTP API as an OpenAPI 3.0 document, and the ``GET /openapi.json`` route that serves it.

The document is built from the constants the handlers themselves use (datatypes, routing policies, header
names, decode limits), so it describes the API as it is rather than as someone once wrote it down. Given the
catalog it also names the models this gateway serves: a fuzzer (schemathesis) then reaches the inference
handler instead of stopping at 404, and a client generator sees a working example request.

``openapi_document`` is pure (catalog in, dict out); ``openapi_route`` is the thin aiohttp edge over it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from aiohttp import web

from gateway.config import PRIORITIES, Access, AccessLevels
from gateway.fronts.access import Family
from gateway.routing.policy import POLICIES
from railcore.catalog import ModelInfo, TensorMeta
from railcore.protocol.codec import (
    BINARY_CONTENT_TYPE,
    HEADER_LENGTH,
    JSON_CONTENT_TYPE,
    MSGPACK_CONTENT_TYPE,
    DecodeLimits,
)
from railcore.protocol.types import DTYPES

OPENAPI_VERSION = "3.0.3"
# One region name, as gateway/call.py accepts it in X-Allowed-Regions (tests/test_openapi.py keeps the two equal).
REGION_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"
_JSON = "application/json"
_TEXT = "text/plain"
_RETRY_AFTER = {"schema": {"type": "integer", "minimum": 0}, "description": "Seconds to wait.", "required": False}
_WWW_AUTHENTICATE = {"schema": {"type": "string"}, "description": "Bearer.", "required": False}
# Triton's statistics schema: {"model_stats": [{name, version, inference_count, inference_stats, ...}]}.
_STATISTICS = {
    "description": "OK.",
    "content": {
        _JSON: {
            "schema": {
                "type": "object",
                "required": ["model_stats"],
                "properties": {"model_stats": {"type": "array", "items": {"type": "object"}}},
            }
        }
    },
}
_HTML = {"description": "The page.", "content": {"text/html": {"schema": {"type": "string"}}}}
_USAGE_COUNTERS = ("requests", "inferences", "inferences_today", "daily_quota", "spend")

# Status -> when the inference route answers it. Every one carries {"error": "..."}.
_INFER_ERRORS = {
    400: "Malformed body, unknown datatype, shape or size mismatch (the message names the input), bad header, "
    "unknown routing policy or priority, malformed regions.",
    401: "Tenants are configured and the request has no valid API key.",
    403: "The tenant may not use this model, or asked for regions outside its residency.",
    404: "Unknown model or version.",
    413: "Body over the configured limit (from Content-Length, before the body is read), or a tensor whose "
    "shape holds more elements than the limit.",
    429: "Over the tenant's rate or daily quota, or the model's queue is full; retry after Retry-After.",
    502: "The hub failed (every allowed hub, after failover).",
    503: "No healthy backend serves the model (or none in the allowed regions: the message names them), or "
    "the gateway is full or predicts the request would miss its budget (with Retry-After).",
    504: "The request's latency budget ran out; it was answered at its deadline.",
}
# /admin/* once tenants or admin keys are configured.
_ADMIN_ERRORS = {401: "No API key.", 403: "The key is not an admin key."}


def _package_version() -> str:
    try:
        return metadata.version("railgate")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _ops_path(path: str) -> bool:
    """Whether ``path`` moves to the ops listener when ``listen.ops`` is set."""
    return path in ("/metrics", "/status") or path.startswith(("/admin/", "/dashboard"))


@dataclass(frozen=True, slots=True)
class Keys:
    """Which routes need a key, as the access middleware decides it: the levels, and whether tenants
    (``tenant`` is open without them) and any keys at all (``admin`` is open without) are configured."""

    levels: AccessLevels = field(default_factory=AccessLevels)
    tenants: bool = False
    admin: bool = False

    def level(self, family: Family) -> Access | None:
        """The level a key is needed for on ``family``'s routes; None when they are open."""
        level = Access(getattr(self.levels, family))
        needed = (level == Access.TENANT and self.tenants) or (level == Access.ADMIN and self.admin)
        return level if needed else None


def openapi_document(
    models: Mapping[str, ModelInfo] | None = None,
    *,
    version: str | None = None,
    ops_routes: bool = True,
    keys: Keys = Keys(),
) -> dict[str, Any]:
    """The OpenAPI 3.0 document of the gateway's HTTP API.

    With ``models`` (the gateway's catalog), the ``model`` and ``version`` path parameters are enums of what is
    served, and the inference body's example is a valid request for the first model. ``ops_routes=False``
    (an ops listener serves them): the public port's document leaves out /metrics, /status, /dashboard, /admin/*.
    ``keys``: each operation whose family needs a key gets the bearer ``security`` and its 401 (and 403).
    """
    first = next(iter(models.values()), None) if models else None
    paths = {**_server_paths(), **_model_paths(first), **_operation_paths()}
    if not ops_routes:
        paths = {path: item for path, item in paths.items() if not _ops_path(path)}
    _secure(paths, keys)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "railgate",
            "version": version or _package_version(),
            "description": "An edge-to-hub inference gateway speaking the KServe v2 / Open Inference Protocol as "
            'Triton serves it. Every error is {"error": "..."} (msgpack for msgpack requests).',
        },
        "tags": [{"name": name} for name in ("server", "health", "models", "inference", "operations")],
        "paths": paths,
        "components": _components(models),
    }


def openapi_route(
    catalog: Callable[[], Mapping[str, ModelInfo]], ops_routes: bool = True, keys: Keys = Keys()
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The ``GET /openapi.json`` handler. ``catalog`` is called per request, since a reload or a hub's
    discovery rebinds the catalog (``Router.rebuild_catalog`` never changes one in place); the document
    is built and encoded once per catalog and served from that cache until the catalog is another one."""
    cached: tuple[Mapping[str, ModelInfo], bytes] | None = None

    async def openapi_json(request: web.Request) -> web.Response:
        nonlocal cached
        models = catalog()
        if cached is None or cached[0] is not models:  # holding the catalog: its id cannot be reused
            cached = (models, json.dumps(openapi_document(models, ops_routes=ops_routes, keys=keys)).encode())
        return web.Response(body=cached[1], content_type=_JSON)

    return openapi_json


# -- who needs a key -------------------------------------------------------------------------------------

# Each operation's route family (fronts/access.py): by operationId, or by its prefix for the per-model ones.
_OP_FAMILIES = {
    "serverLive": Family.HEALTH,
    "serverReady": Family.HEALTH,
    "metrics": Family.METRICS,
    "status": Family.STATUS,
    "usage": Family.USAGE,
    "openapi": Family.OPENAPI,
    "adminReload": Family.ADMIN,
    "drainHub": Family.ADMIN,
    "undrainHub": Family.ADMIN,
}
_PREFIX_FAMILIES = (("infer", Family.INFERENCE), ("dashboard", Family.DASHBOARD))


def _op_family(operation_id: str) -> Family:
    family = _OP_FAMILIES.get(operation_id)
    if family is not None:
        return family
    return next((f for prefix, f in _PREFIX_FAMILIES if operation_id.startswith(prefix)), Family.METADATA)


def _secure(paths: dict[str, Any], keys: Keys) -> None:
    """Give every operation that needs a key its ``security`` and 401, and the 403 it can answer: not an
    admin key (admin), or a model outside the tenant's list (tenant, on a route with ``{model}``)."""
    for path, item in paths.items():
        for method, op in item.items():
            if method == "parameters":
                continue
            level = keys.level(_op_family(op["operationId"]))
            if level is None:
                continue
            responses = op["responses"]
            if "401" not in responses:
                responses["401"] = {**_error("No API key, or one that is not valid."),
                                    "headers": {"WWW-Authenticate": _WWW_AUTHENTICATE}}  # fmt: skip
            if level == Access.ADMIN:
                responses.setdefault("403", _error(_ADMIN_ERRORS[403]))
            elif "{model}" in path:
                responses.setdefault("403", _error("The tenant may not use this model."))
            op.setdefault("security", [{"bearer": []}])


# -- paths ----------------------------------------------------------------------------------------------


def _server_paths() -> dict[str, Any]:
    return {
        "/v2": {"get": _op("serverMetadata", "server", "Server metadata.", {200: _json_ref("ServerMetadata")})},
        "/v2/health/live": {"get": _op("serverLive", "health", "200 while the process serves HTTP.", {200: _empty()})},
        "/v2/health/ready": {
            "get": _op(
                "serverReady",
                "health",
                "Ready when at least one model has a healthy backend.",
                {200: _empty(), 503: _empty("No model has a healthy backend.")},
            )
        },
    }


def _model_paths(first: ModelInfo | None) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    unknown = _error("Unknown model or version.")
    for prefix, suffix in (("/v2/models/{model}", "Model"), ("/v2/models/{model}/versions/{version}", "Version")):
        params = [_ref("parameters", "model")] + ([_ref("parameters", "version")] if suffix == "Version" else [])
        paths[prefix] = {
            "parameters": params,
            "get": _op(
                f"metadata{suffix}", "models", "Model metadata.", {200: _json_ref("ModelMetadata"), 404: unknown}
            ),
        }
        paths[prefix + "/ready"] = {
            "parameters": params,
            "get": _op(
                f"ready{suffix}",
                "models",
                "200 when a healthy backend serves the model.",
                {200: _empty(), 503: _empty("No healthy backend serves the model."), 404: unknown},
            ),
        }
        paths[prefix + "/config"] = {
            "parameters": params,
            "get": _op(
                f"config{suffix}",
                "models",
                "Triton's JSON model configuration.",
                {200: _json_ref("ModelConfig"), 404: unknown},
            ),
        }
        paths[prefix + "/infer"] = {"parameters": params, "post": _infer_operation(f"infer{suffix}", first)}
        paths[prefix + "/stats"] = {
            "parameters": params,
            "get": _op(
                f"statistics{suffix}",
                "models",
                "Triton's statistics extension for the model, from the gateway's view.",
                {200: _STATISTICS, 404: unknown},
            ),
        }
    paths["/v2/models/stats"] = {
        "get": _op("statistics", "models", "Triton's statistics extension for every model.", {200: _STATISTICS})
    }
    paths["/v2/repository/index"] = {
        "post": _op("repositoryIndex", "models", "The models and their state.", {200: _json_ref("RepositoryIndex")})
    }
    return paths


def _operation_paths() -> dict[str, Any]:
    no_hub = _error("No hub by that name.")
    return {
        "/metrics": {
            "get": _op(
                "metrics",
                "operations",
                "Prometheus text exposition; every metric is prefixed railgate_.",
                {200: {"description": "Metrics.", "content": {_TEXT: {"schema": {"type": "string"}}}}},
            )
        },
        "/dashboard": {"get": _op("dashboard", "operations", "The live status page (HTML).", {200: _HTML})},
        "/dashboard/": {"get": _op("dashboardIndex", "operations", "The live status page (HTML).", {200: _HTML})},
        "/dashboard/{asset}": {
            "parameters": [{"name": "asset", "in": "path", "required": True, "schema": {"type": "string"}}],
            "get": _op(
                "dashboardAsset",
                "operations",
                "One of the page's static files (CSS, JS).",
                {200: {"description": "The file."}, 404: _error("No such file.")},
            ),
        },
        "/status": {
            "get": _op(
                "status",
                "operations",
                "Every hub's health, breaker, estimates and recent routing decisions.",
                {200: _json_ref("Status")},
            )
        },
        "/v1/usage": {
            "get": {
                **_op(
                    "usage",
                    "operations",
                    "Usage and spend per tenant: every tenant's for an admin key, a tenant's own for its key.",
                    {
                        200: _json_ref("Usage"),
                        401: {
                            **_error("No key, or a key no tenant has."),
                            "headers": {"WWW-Authenticate": _WWW_AUTHENTICATE},
                        },
                        404: _error("No tenants are configured."),
                    },
                ),
                "security": [{"bearer": []}],
            }
        },
        "/admin/reload": {
            "post": _op(
                "adminReload",
                "operations",
                "Re-read the config file's hub table without dropping a request (as SIGHUP does).",
                {
                    200: _json_ref("ReloadResult"),
                    400: _error("The file is invalid; the old hub table stays."),
                    **_admin_errors(),
                },
            )
        },
        "/admin/hubs/{hub}/drain": {
            "parameters": [_path_param("hub", {"type": "string"}, "A hub's name from the config.")],
            "post": _op(
                "drainHub",
                "operations",
                "Stop new batches to the hub while its in-flight work finishes.",
                {200: _json_ref("DrainResult"), 404: no_hub, **_admin_errors()},
            ),
            "delete": _op(
                "undrainHub",
                "operations",
                "Let the hub take new batches again.",
                {200: _json_ref("DrainResult"), 404: no_hub, **_admin_errors()},
            ),
        },
        "/openapi.json": {
            "get": _op(
                "openapi",
                "server",
                "This document, with the models the gateway serves now.",
                {200: {"description": "OpenAPI 3.0 document.", "content": {_JSON: {"schema": {"type": "object"}}}}},
            )
        },
    }


# -- inference ------------------------------------------------------------------------------------------


_GATEWAY_MS = {
    "description": "The gateway's own time for the call, from its handler's start to the reply (errors too).",
    "schema": {"type": "number", "minimum": 0},
    "required": False,
}


def _infer_operation(operation_id: str, first: ModelInfo | None) -> dict[str, Any]:
    json_body: dict[str, Any] = {"schema": _ref("schemas", "InferRequest")}
    if first is not None:
        json_body["example"] = example_request(first)
    headers = {
        "X-Served-By": _header(_STRING, "The hub's name, or local.", required=True),
        "X-Batch-Size": _header({"type": "integer", "minimum": 1}, "Rows in the batch it ran in.", required=True),
        "X-Route-Reason": _header(_STRING, "Why that backend was chosen.", required=True),
        "X-Queue-Ms": _header({"type": "number", "minimum": 0}, "Time spent queued for a batch."),
        "X-Backend-Ms": _header({"type": "number", "minimum": 0}, "Time the backend took for the batch."),
        "X-Gateway-Ms": _GATEWAY_MS,
        HEADER_LENGTH: _header({"type": "integer", "minimum": 0}, "Length of the JSON header (binary replies)."),
    }
    responses: dict[Any, Any] = {
        200: {
            "description": "The outputs, in the request's encoding; outputs asked binary follow the JSON header.",
            "headers": headers,
            "content": {
                JSON_CONTENT_TYPE: {"schema": _ref("schemas", "InferResponse")},
                BINARY_CONTENT_TYPE: {"schema": _BYTES},
                MSGPACK_CONTENT_TYPE: {"schema": _ref("schemas", "MsgpackInferResponse")},
            },
        }
    }
    for status, why in _INFER_ERRORS.items():
        response = _error(why)
        if status in (502, 503, 504):
            response["headers"] = {
                "X-Served-By": _header({"type": "string"}, "The hub that failed, when one was tried."),
                "X-Route-Reason": _header({"type": "string"}, "Why that hub was chosen."),
            }
        if status in (429, 503):
            response.setdefault("headers", {})["Retry-After"] = _RETRY_AFTER
        response.setdefault("headers", {})["X-Gateway-Ms"] = _GATEWAY_MS
        if status == 401:
            response["headers"] = {"WWW-Authenticate": _WWW_AUTHENTICATE}
        responses[status] = response
    return {
        **_op(operation_id, "inference", "Run inference, batched with other requests for the same model.", responses),
        "parameters": [
            _ref("parameters", name) for name in ("budget", "policy", "regions", "priority", "headerLength")
        ],
        "security": [{}, {"bearer": []}],
        "requestBody": {
            "required": True,
            "description": "v2 JSON; Triton's binary tensor extension (the first Inference-Header-Content-Length "
            "bytes are the JSON request, the rest the raw tensors of the inputs with binary_data_size, in order); "
            "or msgpack (tensor data as raw little-endian bin).",
            "content": {
                JSON_CONTENT_TYPE: json_body,
                BINARY_CONTENT_TYPE: {"schema": _BYTES},
                MSGPACK_CONTENT_TYPE: {"schema": _ref("schemas", "MsgpackInferRequest")},
            },
        },
    }


def example_request(model: ModelInfo) -> dict[str, Any]:
    """A valid v2 JSON request for ``model``: one row, every variable dimension 1, zeros (or "zero")."""
    inputs = []
    for tensor in model.inputs:
        shape = [1 if dim < 0 else dim for dim in tensor.shape]
        inputs.append(
            {"name": tensor.name, "datatype": tensor.datatype, "shape": shape, "data": _zeros(tensor, math.prod(shape))}
        )
    return {"id": "example", "inputs": inputs, "outputs": [{"name": t.name} for t in model.outputs]}


def _zeros(tensor: TensorMeta, count: int) -> list[Any]:
    zero: Any = {"BOOL": False, "BYTES": "zero"}.get(tensor.datatype, 0)
    return [zero] * count


# -- components -----------------------------------------------------------------------------------------

_STRING: dict[str, Any] = {"type": "string"}
_RAW = {"type": "string", "format": "binary", "description": "Raw little-endian tensor bytes, C order."}
_BYTES = {"type": "string", "format": "binary"}
_DATATYPE = {"type": "string", "enum": list(DTYPES)}


def _components(models: Mapping[str, ModelInfo] | None) -> dict[str, Any]:
    model_schema, version_schema = dict(_STRING), dict(_STRING)
    if models:
        model_schema["enum"] = list(models)
        version_schema["enum"] = sorted({v for info in models.values() for v in info.versions})
    return {
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "A tenant's API key (rg_...) for /v2/models/*/infer and /v1/usage, an admin key "
                "for /admin/* and /v1/usage. Needed only once tenants or admin keys are configured.",
            }
        },
        "parameters": {
            "model": _path_param("model", model_schema, "A model the gateway serves."),
            "version": _path_param("version", version_schema, "One of the model's versions."),
            "budget": _header_param(
                "X-Latency-Budget-Ms",
                {"type": "number", "minimum": 0},
                "End-to-end latency budget in milliseconds; the v2 timeout parameter is honoured too, the tighter "
                "wins. A request whose budget is spent is answered 504 and never reaches a backend.",
            ),
            "policy": _header_param("X-Route-Policy", _enum(POLICIES), "How a hub is chosen for the batch."),
            "priority": _header_param(
                "X-Priority", _enum(PRIORITIES), "Shedding order under load (default: the tenant's, else normal)."
            ),
            "regions": _header_param(
                "X-Allowed-Regions",
                {"type": "string", "pattern": f"^{REGION_PATTERN}(,{REGION_PATTERN})*$"},
                "Comma-separated regions; no hub outside them is used (503 naming them when none can serve).",
            ),
            "headerLength": _header_param(
                HEADER_LENGTH,
                {"type": "integer", "minimum": 0},
                "Binary tensor extension: the byte length of the JSON request at the start of the body.",
            ),
        },
        "schemas": _schemas(),
    }


def _schemas() -> dict[str, Any]:
    tensor_meta = _object(
        {"name": _STRING, "datatype": _DATATYPE, "shape": _array({"type": "integer", "minimum": -1})},
        required=("name", "datatype", "shape"),
    )
    element = {"anyOf": [{"type": "number"}, {"type": "boolean"}, _STRING]}
    return {
        "Error": _object(
            {"error": {"type": "string", "description": "What was wrong and what was expected."}},
            required=("error",),
            extra=False,
        ),
        "ServerMetadata": _object(
            {"name": _STRING, "version": _STRING, "extensions": _array(_STRING)},
            required=("name", "version", "extensions"),
        ),
        "TensorMetadata": tensor_meta,
        "ModelMetadata": _object(
            {
                "name": _STRING,
                "versions": _array(_STRING),
                "platform": _STRING,
                "inputs": _array(_ref("schemas", "TensorMetadata")),
                "outputs": _array(_ref("schemas", "TensorMetadata")),
            },
            required=("name", "versions", "platform", "inputs", "outputs"),
        ),
        "ModelConfig": {
            "type": "object",
            "description": "Triton's model configuration as JSON (config.pbtxt's fields).",
            "additionalProperties": True,
        },
        "RepositoryIndex": _array(
            _object(
                {"name": _STRING, "version": _STRING, "state": _enum(("READY", "UNAVAILABLE"))},
                required=("name", "version", "state"),
            )
        ),
        "TensorData": {
            "type": "array",
            "description": "Flat or nested (row-major) elements: numbers, true/false for BOOL, strings for BYTES.",
            "items": {"anyOf": [*element["anyOf"], _array(element)]},
        },
        "InferRequest": _request_schema(_ref("schemas", "TensorData")),
        "InferResponse": _response_schema(_ref("schemas", "TensorData")),
        "MsgpackInferRequest": _request_schema(_RAW),
        "MsgpackInferResponse": _response_schema(_RAW),
        "Status": _object(
            {
                "default_policy": _enum(POLICIES),
                "hubs": _array({"type": "object", "additionalProperties": True}),
                "recent_decisions": {"type": "array"},
            },
            required=("default_policy", "hubs", "recent_decisions"),
            extra=True,
        ),
        "Usage": {
            "type": "object",
            "description": "Tenant name -> its counters.",
            "additionalProperties": _object(
                {name: {"type": "number", "minimum": 0} for name in _USAGE_COUNTERS}, required=_USAGE_COUNTERS
            ),
        },
        "ReloadResult": {
            "type": "object",
            "description": "What the reload changed, by hub.",
            "additionalProperties": True,
        },
        "DrainResult": _object(
            {"hub": _STRING, "draining": {"type": "boolean"}, "inflight": {"type": "integer", "minimum": 0}},
            required=("hub", "draining", "inflight"),
        ),
    }


def _request_schema(data: dict[str, Any]) -> dict[str, Any]:
    """The v2 request; ``data`` is the schema of a tensor's data (JSON elements, or msgpack's raw bytes)."""
    limits = DecodeLimits()
    tensor = _object(
        {
            "name": _STRING,
            "datatype": _DATATYPE,
            "shape": _array({"type": "integer", "minimum": 0}, maxItems=limits.max_dims),
            "data": data,
            "parameters": _object({"binary_data_size": {"type": "integer", "minimum": 0}}, extra=True),
        },
        required=("name", "datatype", "shape"),
    )
    output = _object(
        {"name": _STRING, "parameters": _object({"binary_data": {"type": "boolean"}}, extra=True)}, required=("name",)
    )
    parameters = _object(
        {
            "timeout": {"type": "number", "minimum": 0, "description": "Budget in microseconds (the tighter wins)."},
            "binary_data_output": {"type": "boolean", "description": "Every output binary, after the JSON header."},
        },
        extra=True,
    )
    return _object(
        {
            "id": _STRING,
            "parameters": parameters,
            "inputs": _array(tensor, maxItems=limits.max_inputs),
            "outputs": _array(output),
        },
        required=("inputs",),
    )


def _response_schema(data: dict[str, Any]) -> dict[str, Any]:
    output = _object(
        {
            "name": _STRING,
            "datatype": _DATATYPE,
            "shape": _array({"type": "integer", "minimum": 0}),
            "data": data,
            "parameters": {"type": "object", "additionalProperties": True},
        },
        required=("name", "datatype", "shape"),
    )
    return _object(
        {
            "model_name": _STRING,
            "model_version": _STRING,
            "id": _STRING,
            "parameters": {"type": "object", "additionalProperties": True},
            "outputs": _array(output),
        },
        required=("model_name", "model_version", "outputs"),
    )


# -- small builders -------------------------------------------------------------------------------------


def _ref(section: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{section}/{name}"}


def _object(properties: dict[str, Any], *, required: tuple[str, ...] = (), extra: bool | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    if extra is not None:
        schema["additionalProperties"] = extra
    return schema


def _array(items: dict[str, Any], **constraints: Any) -> dict[str, Any]:
    return {"type": "array", "items": items, **constraints}


def _enum(values: tuple[str, ...]) -> dict[str, Any]:
    return {"type": "string", "enum": list(values)}


def _op(operation_id: str, tag: str, summary: str, responses: dict[int, Any]) -> dict[str, Any]:
    return {
        "operationId": operation_id,
        "tags": [tag],
        "summary": summary,
        "responses": {str(status): response for status, response in responses.items()},
    }


def _json_ref(schema: str) -> dict[str, Any]:
    return {"description": "OK.", "content": {_JSON: {"schema": _ref("schemas", schema)}}}


def _empty(description: str = "OK.") -> dict[str, Any]:
    return {"description": description}


def _error(description: str) -> dict[str, Any]:
    schema = _ref("schemas", "Error")
    return {
        "description": description,
        "content": {_JSON: {"schema": schema}, MSGPACK_CONTENT_TYPE: {"schema": schema}},
    }


def _admin_errors() -> dict[int, Any]:
    errors = {status: _error(why) for status, why in _ADMIN_ERRORS.items()}
    errors[401]["headers"] = {"WWW-Authenticate": _WWW_AUTHENTICATE}
    return errors


def _path_param(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    param = {"name": name, "in": "path", "required": True, "schema": schema, "description": description}
    if "enum" in schema:
        param["example"] = schema["enum"][0]
    return param


def _header_param(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "schema": schema, "description": description}


def _header(schema: dict[str, Any], description: str, *, required: bool = False) -> dict[str, Any]:
    return {"schema": schema, "description": description, "required": required}

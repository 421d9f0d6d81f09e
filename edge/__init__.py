"""The on-device runtime: ONNX Runtime sessions, the offload decision, the firmware-facing API, model sync.

The public surface is what this module exports (and the ``railgate edge`` CLI with its config file);
every other module of the package is implementation and may change.

    from edge import EdgeRuntime, load_edge_config

    with EdgeRuntime(load_edge_config(Path("edge.yaml"))) as rt:
        result = rt.infer_sync("digits", {"pixels": x}, budget_ms=20)
        result.outputs["label"], result.served_by, result.reason
"""

from edge.config import EdgeConfig, load_edge_config, parse_edge_config
from edge.errors import EdgeError, ModelRefused, ModelUnavailable
from edge.runtime import EdgeResult, EdgeRuntime

__all__ = [
    "EdgeConfig",
    "EdgeError",
    "EdgeResult",
    "EdgeRuntime",
    "ModelRefused",
    "ModelUnavailable",
    "load_edge_config",
    "parse_edge_config",
]

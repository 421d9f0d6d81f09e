"""ONNX Runtime helpers the gateway's local backend and the edge runtime share."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from railcore.errors import NoBackend

_PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def choose_providers(pinned: tuple[str, ...] = ()) -> list[str]:
    """Pinned providers if given, else the best this onnxruntime offers: TensorRT > CUDA > CPU."""
    available = ort.get_available_providers()
    if pinned:
        missing = [p for p in pinned if p not in available]
        if missing:
            raise NoBackend(f"execution provider(s) {', '.join(missing)} not available; have {', '.join(available)}")
        return list(pinned)
    return [p for p in _PROVIDER_PREFERENCE if p in available] or ["CPUExecutionProvider"]


def ort_strings(array: np.ndarray) -> np.ndarray:
    """BYTES travel as ``bytes``; ONNX Runtime's string tensors want ``str``."""
    flat = [b.decode("utf-8", "surrogateescape") if isinstance(b, bytes) else str(b) for b in array.flat]
    return np.array(flat, dtype=object).reshape(array.shape)


def bytes_elements(array: np.ndarray) -> np.ndarray:
    """ONNX Runtime's ``str`` results back to the ``bytes`` elements BYTES tensors carry."""
    flat = [s.encode("utf-8", "surrogateescape") if isinstance(s, str) else s for s in array.flat]
    return np.array(flat, dtype=object).reshape(array.shape)

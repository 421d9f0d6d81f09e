"""The shared core of railgate: what the gateway and the edge runtime both use.

Codecs of the Open Inference Protocol (``protocol/``), the one error tree (``errors``), the pure
batch queue (``batching``), latency estimators (``estimators``), the circuit breaker (``breaker``),
model metadata and request validation (``catalog``), the Triton model repository reader
(``repository``), ONNX Runtime helpers (``onnx``), the typed settings loader (``settings``) and the
one error-to-reply mapping for aiohttp fronts (``web``).

It imports no gateway server, no hub client, no ``tritonclient`` and no dev tool: a device that
installs the edge runtime gets this package and nothing of the gateway's.
"""

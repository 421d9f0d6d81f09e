"""The Open Inference Protocol (KServe v2) as Triton speaks it: value objects and the codecs for its three encodings."""

from railcore.protocol.binary import deserialize_bytes_tensor, serialize_bytes_tensor
from railcore.protocol.codec import DecodeLimits, decode_request, encode_error, encode_response
from railcore.protocol.types import DTYPES, Encoding, InferRequest, InferResponse, RequestedOutput, Tensor

__all__ = [
    "DTYPES",
    "DecodeLimits",
    "Encoding",
    "InferRequest",
    "InferResponse",
    "RequestedOutput",
    "Tensor",
    "decode_request",
    "deserialize_bytes_tensor",
    "encode_error",
    "encode_response",
    "serialize_bytes_tensor",
]

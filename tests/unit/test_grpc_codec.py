"""The gRPC codec: tritonclient's own request messages in, railgate's value objects out, and back."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2
from tritonclient.grpc._utils import _get_inference_request

from gateway.fronts.grpc_codec import decode_infer_request, encode_infer_response
from railcore.errors import BadRequest, PayloadTooLarge
from railcore.protocol.codec import DecodeLimits
from railcore.protocol.types import InferResponse, Tensor

LIMITS = DecodeLimits()

ARRAYS = {
    "BOOL": np.array([[True, False, True]]),
    "INT8": np.array([[-1, 2, 3]], dtype=np.int8),
    "INT16": np.array([[-1, 2, 3]], dtype=np.int16),
    "INT32": np.array([[-1, 2, 3]], dtype=np.int32),
    "INT64": np.array([[-1, 2, 2**40]], dtype=np.int64),
    "UINT8": np.array([[1, 2, 255]], dtype=np.uint8),
    "UINT16": np.array([[1, 2, 65535]], dtype=np.uint16),
    "UINT32": np.array([[1, 2, 2**32 - 1]], dtype=np.uint32),
    "UINT64": np.array([[1, 2, 2**63]], dtype=np.uint64),
    "FP16": np.array([[0.5, -1.0, 2.0]], dtype=np.float16),
    "FP32": np.array([[0.5, -1.0, 2.0]], dtype=np.float32),
    "FP64": np.array([[0.5, -1.0, 1e300]], dtype=np.float64),
    "BYTES": np.array([[b"a", b"", b"\xff\x00"]], dtype=object),
}


def _message(inputs: list[grpcclient.InferInput], **kwargs) -> service_pb2.ModelInferRequest:
    return _get_inference_request(
        model_name="m",
        inputs=inputs,
        model_version=kwargs.get("version", ""),
        request_id=kwargs.get("request_id", ""),
        outputs=kwargs.get("outputs"),
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=0,
        timeout=kwargs.get("timeout"),
        parameters=None,
    )


def _input(name: str, datatype: str, array: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


@pytest.mark.parametrize("datatype", sorted(ARRAYS))
def test_raw_inputs_of_every_datatype_decode_to_the_same_array(datatype: str):
    request = decode_infer_request(_message([_input("x", datatype, ARRAYS[datatype])]), LIMITS)
    (tensor,) = request.inputs
    assert (tensor.name, tensor.datatype, tensor.shape) == ("x", datatype, (1, 3))
    assert tensor.data.tolist() == ARRAYS[datatype].tolist()


@pytest.mark.parametrize("datatype", sorted(set(ARRAYS) - {"FP16"}))
def test_typed_contents_decode_like_raw_ones(datatype: str):
    message = _message([_input("x", datatype, ARRAYS[datatype])])
    field = {
        "BOOL": "bool_contents",
        "INT64": "int64_contents",
        "UINT64": "uint64_contents",
        "FP32": "fp32_contents",
        "FP64": "fp64_contents",
        "BYTES": "bytes_contents",
    }.get(datatype, "int_contents" if datatype.startswith("INT") else "uint_contents")
    getattr(message.inputs[0].contents, field).extend(ARRAYS[datatype].ravel().tolist())
    del message.raw_input_contents[:]
    (tensor,) = decode_infer_request(message, LIMITS).inputs
    assert (
        tensor.data.dtype
        == decode_infer_request(_message([_input("x", datatype, ARRAYS[datatype])]), LIMITS).inputs[0].data.dtype
    )
    assert tensor.data.tolist() == ARRAYS[datatype].tolist()


def test_request_id_version_outputs_and_timeout_parameter_come_through():
    outputs = [grpcclient.InferRequestedOutput("y")]
    message = _message(
        [_input("x", "FP32", ARRAYS["FP32"])], version="2", request_id="r-7", outputs=outputs, timeout=1500
    )
    request = decode_infer_request(message, LIMITS)
    assert (request.model, request.version, request.id) == ("m", "2", "r-7")
    assert [o.name for o in request.outputs] == ["y"]
    assert request.parameters["timeout"] == 1500


def test_raw_contents_of_the_wrong_size_name_the_input():
    message = _message([_input("x", "FP32", ARRAYS["FP32"])])
    message.raw_input_contents[0] = b"\x00" * 5
    with pytest.raises(BadRequest, match=r"input 'x'.*5 bytes, expected 12"):
        decode_infer_request(message, LIMITS)


def test_raw_contents_must_cover_every_input():
    message = _message([_input("x", "FP32", ARRAYS["FP32"]), _input("y", "FP32", ARRAYS["FP32"])])
    del message.raw_input_contents[1]
    with pytest.raises(BadRequest, match="one per input"):
        decode_infer_request(message, LIMITS)


def test_an_unknown_datatype_is_a_bad_request():
    message = _message([_input("x", "FP32", ARRAYS["FP32"])])
    message.inputs[0].datatype = "FP8"
    with pytest.raises(BadRequest, match="unknown datatype 'FP8'"):
        decode_infer_request(message, LIMITS)


def test_a_shape_over_the_element_limit_is_refused_before_any_data_is_read():
    message = _message([_input("x", "FP32", ARRAYS["FP32"])])
    message.inputs[0].shape[:] = [1 << 20, 1 << 20]
    with pytest.raises(PayloadTooLarge, match="elements; the limit is"):
        decode_infer_request(message, LIMITS)


def test_typed_contents_with_the_wrong_count_name_the_input():
    message = _message([_input("x", "INT32", ARRAYS["INT32"])])
    del message.raw_input_contents[:]
    message.inputs[0].contents.int_contents.extend([1, 2])
    with pytest.raises(BadRequest, match=r"input 'x': contents has 2 elements, expected 3"):
        decode_infer_request(message, LIMITS)


def test_fp16_has_no_typed_contents():
    message = _message([_input("x", "FP16", ARRAYS["FP16"])])
    del message.raw_input_contents[:]
    with pytest.raises(BadRequest, match="FP16 has no typed contents"):
        decode_infer_request(message, LIMITS)


def test_typed_values_out_of_range_are_refused():
    message = _message([_input("x", "INT8", ARRAYS["INT8"])])
    del message.raw_input_contents[:]
    message.inputs[0].contents.int_contents.extend([1, 2, 300])
    with pytest.raises(BadRequest, match="out of range for INT8"):
        decode_infer_request(message, LIMITS)


@pytest.mark.parametrize("datatype", sorted(ARRAYS))
def test_replies_go_back_raw_and_tritonclient_reads_them(datatype: str):
    array = ARRAYS[datatype]
    response = InferResponse("m", "1", [Tensor("y", datatype, array.shape, array)], id="r-1")
    message = encode_infer_response(response)
    result = grpcclient.InferResult(message)
    assert (message.model_name, message.model_version, message.id) == ("m", "1", "r-1")
    assert result.as_numpy("y").tolist() == array.tolist()


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4).T,  # not C-contiguous
        np.arange(6, dtype=">f4").reshape(2, 3),  # big-endian
        np.arange(6, dtype=np.float64).reshape(2, 3),  # wider than the datatype
        np.zeros((0, 3), dtype=np.float32),  # empty
    ],
    ids=["transposed", "big-endian", "float64", "empty"],
)
def test_a_reply_tensor_in_any_layout_goes_back_row_major_and_little_endian(array: np.ndarray):
    response = InferResponse("m", "1", [Tensor("y", "FP32", array.shape, array)])
    message = encode_infer_response(response)
    assert message.raw_output_contents[0] == np.ascontiguousarray(array, dtype="<f4").tobytes()
    assert grpcclient.InferResult(message).as_numpy("y").tolist() == array.astype(np.float32).tolist()


def test_a_stream_reply_is_written_into_its_wrapper_in_place():
    response = InferResponse("m", "1", [Tensor("y", "INT32", (1, 3), ARRAYS["INT32"])], id="r-2")
    wrapper = service_pb2.ModelStreamInferResponse()
    assert encode_infer_response(response, wrapper.infer_response) is wrapper.infer_response
    assert wrapper.infer_response == encode_infer_response(response) and wrapper.error_message == ""


def test_an_input_with_both_raw_and_typed_contents_is_a_bad_request():
    message = _message([_input("x", "INT32", ARRAYS["INT32"])])
    message.inputs[0].contents.int_contents.extend([1, 2, 3])
    with pytest.raises(BadRequest, match="input 'x': has both contents and raw_input_contents"):
        decode_infer_request(message, LIMITS)


def test_an_input_named_twice_is_a_bad_request():
    message = _message([_input("x", "FP32", ARRAYS["FP32"]), _input("x", "FP32", ARRAYS["FP32"])])
    with pytest.raises(BadRequest, match="input 'x' appears more than once"):
        decode_infer_request(message, LIMITS)


def test_an_unnamed_input_is_a_bad_request():
    message = _message([_input("x", "FP32", ARRAYS["FP32"])])
    message.inputs[0].name = ""
    with pytest.raises(BadRequest, match="has no name"):
        decode_infer_request(message, LIMITS)


def test_a_negative_dim_is_a_bad_request():
    message = _message([_input("x", "FP32", ARRAYS["FP32"])])
    message.inputs[0].shape[:] = [-1, 3]
    with pytest.raises(BadRequest, match="negative dim"):
        decode_infer_request(message, LIMITS)


@pytest.mark.parametrize("typed", [False, True], ids=["raw", "typed"])
def test_a_bytes_element_over_the_limit_is_too_large(typed: bool):
    big = np.array([[b"x" * 33]], dtype=object)
    message = _message([_input("w", "BYTES", big)])
    if typed:
        del message.raw_input_contents[:]
        message.inputs[0].contents.bytes_contents.extend([b"x" * 33])
    with pytest.raises(PayloadTooLarge, match="33 bytes"):
        decode_infer_request(message, DecodeLimits(max_bytes_element=32))

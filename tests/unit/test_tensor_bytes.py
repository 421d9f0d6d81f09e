"""railcore.protocol.binary.tensor_bytes gives a tensor's wire bytes (C order, the datatype's width) whatever
the array's layout, and catalog._shape_matches checks a shape against a model's (-1: any size there)."""

from __future__ import annotations

import numpy as np
import pytest

from railcore.catalog import _shape_matches
from railcore.protocol.binary import DTYPES, tensor_bytes

NUMERIC = [name for name in DTYPES if name != "BYTES"]


def _arrays(dtype: np.dtype) -> list[np.ndarray]:
    base = (np.arange(24) % 7).astype(dtype).reshape(4, 6)
    return [
        base,  # C-contiguous, the datatype's own dtype: the view path
        base[:, ::2],  # strided
        np.asfortranarray(base),  # Fortran order
        base.T,  # transposed
        base[1:2],  # a row's view
        np.array(3, dtype=dtype),  # 0-d
        base[:0],  # empty
        np.zeros((0, 6), dtype=dtype),  # empty, contiguous
        base.astype(np.float64 if dtype != np.float64 else np.float32),  # another width: converted
    ]


@pytest.mark.parametrize("datatype", NUMERIC)
def test_bytes_are_c_order_in_the_datatypes_width(datatype: str) -> None:
    dtype = DTYPES[datatype]
    for arr in _arrays(dtype):
        expected = np.ascontiguousarray(arr, dtype=dtype).tobytes()
        got = tensor_bytes(arr, datatype)
        assert bytes(got) == expected, (datatype, arr.shape, arr.strides, arr.dtype)
        assert memoryview(got).format == "B" and memoryview(got).ndim == 1


def test_a_contiguous_array_of_its_own_dtype_is_not_copied() -> None:
    arr = np.arange(10, dtype=np.float32)
    view = tensor_bytes(arr, "FP32")
    arr[0] = 42.0
    assert bytes(view[:4]) == np.float32(42.0).tobytes()


@pytest.mark.parametrize(
    ("shape", "expected", "ok"),
    [
        ((1, 64), (-1, 64), True),
        ((8, 64), (-1, 64), True),
        ((1, 63), (-1, 64), False),
        ((1, 64, 1), (-1, 64), False),
        ((64,), (-1, 64), False),
        ((3, 5), (-1, -1), True),
        ((2, 5), (3, -1), False),
        ((), (), True),
    ],
)
def test_shape_matches(shape: tuple[int, ...], expected: tuple[int, ...], ok: bool) -> None:
    assert _shape_matches(shape, expected) is ok

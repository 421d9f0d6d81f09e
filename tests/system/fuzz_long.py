"""The HTTP fuzzers of ``test_fuzz_http.py``, run long: ``make fuzz`` (``pytest tests/system/fuzz_long.py``).

Not collected by a plain ``pytest`` (the name does not match ``test_*.py``): this takes minutes. It starts its own
hub (the session ``hub`` fixture of ``conftest.py``) and gateway (``fuzz_gateway``), like the short run.
A failure prints the falsifying request; hypothesis keeps it in ``.hypothesis/`` and replays it first next time.
"""

from __future__ import annotations

import pytest

from tests.system.test_fuzz_http import (  # noqa: F401  (fixtures are used by name)
    OPERATIONS,
    assert_live,
    fuzz_gateway,
    fuzz_infer,
    fuzz_operation,
    gateway_schema,
    skip_unless_served,
)

MAX_EXAMPLES = 2_000
LONG = pytest.mark.timeout(3_600)  # pyproject's 300 s default is for the short suite


@LONG
@pytest.mark.parametrize("operation", OPERATIONS)
def test_every_operation_keeps_its_documented_contract(fuzz_gateway, gateway_schema, operation: str):  # noqa: F811
    skip_unless_served(fuzz_gateway, operation)
    fuzz_operation(gateway_schema, operation, max_examples=MAX_EXAMPLES)
    assert_live(fuzz_gateway)


@LONG
def test_random_bodies_and_headers_get_a_documented_status_and_a_json_error(fuzz_gateway):  # noqa: F811
    fuzz_infer(fuzz_gateway, max_examples=MAX_EXAMPLES * 5)

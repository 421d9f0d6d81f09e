"""The tracing rows of the bench report, on synthetic figures: added p50 and CPU are traced minus off,
paired run by run; the in-process hook cost is said in a line of its own."""

from __future__ import annotations

from bench.report import tracing_markdown


def run(p50: float, gateway_cpu_s: float, ok: int = 1000) -> dict:
    return {"p50_ms": p50, "p99_ms": p50 * 3, "throughput_rps": 100.0, "ok": ok, "errors": 0,
            "cpu_s": {"gateway": gateway_cpu_s}, "spans_received": 0}  # fmt: skip


def test_the_added_p50_and_cpu_are_paired_with_tracing_off_at_the_same_concurrency() -> None:
    section = {
        "cases": [
            {"tracing": "off", "concurrency": 1, "runs": [run(5.0, 1.0), run(6.0, 1.2)]},
            {"tracing": "100%", "concurrency": 1, "runs": [run(5.5, 1.4), run(6.1, 1.5)]},
            {"tracing": "100%", "concurrency": "hooks", "runs": [{"hooks_cpu_us": 640.0}]},
        ]
    }
    table = "\n".join(tracing_markdown(section))
    (traced,) = [line for line in table.splitlines() if line.startswith("| 100% | 1 |")]
    cells = [c.strip() for c in traced.strip("|").split("|")]
    assert cells[4] == "+0.300 [+0.100, +0.500]"  # added p50 ms: median of +0.5 and +0.1
    assert cells[7] == "+350 [+300, +400]"  # added µs/req: (1.4-1.0) and (1.5-1.2) s over 1000 requests
    assert "100%: 640.0 µs" in table

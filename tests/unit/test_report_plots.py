"""The reports' pictures: the sim, chaos and load-test reports write valid PNGs and link them.

Small configurations: a sim of a few hundred requests (the real pipeline, virtual time), chaos rows
as ``bench.chaos`` reports them, and a real locust stats history kept as a fixture (10 s, 5 users).
"""

from __future__ import annotations

import io
import math
import shutil
from pathlib import Path

import pytest

from bench import chaos, simulator
from loadtests import summary
from loadtests.run import _tick, progress_note
from railcore.progress import Progress

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "loadtest"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path, min_width: int = 400) -> None:
    """A non-empty PNG that matplotlib reads back, at least ``min_width`` pixels wide."""
    image = pytest.importorskip("matplotlib.image")
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    pixels = image.imread(path)
    assert pixels.shape[1] >= min_width and pixels.shape[0] >= 200, pixels.shape
    assert pixels.std() > 0, f"{path} is blank"


def test_a_small_sim_writes_both_plots_and_links_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = simulator.main(["--requests", "300", "--policies", "nearest,cheapest", "--out", str(tmp_path)])
    assert code == 0
    progress = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sim")]
    heads = [line.split("  ")[0] for line in progress[:-1]]
    assert heads == [
        "sim: the world and its clairvoyant (300 requests)",
        "sim 1/3 (33%)",
        "sim 2/3 (67%)",
        "sim 3/3 (100%)",
    ]
    assert "nearest (SLO " in progress[2] and progress[-1].startswith("sim done: 3/3 in ")
    assert_png(tmp_path / "sim.png")
    assert_png(tmp_path / "sim_policies.png")
    report = (tmp_path / "sim.md").read_text()
    assert "](sim_policies.png)" in report and "](sim.png)" in report


CHAOS_ROWS = [
    {"scenario": "overload 5x capacity", "sent": 900, "ok": 300, "refused": 600, "errors": 0, "lost": 0,
     "p50_ms": 40.0, "p99_ms": 120.5, "peak_rss_mb": 150.0, "notes": [], "failed": False},
    {"scenario": "hub answers 500s", "sent": 400, "ok": 380, "refused": 0, "errors": 20, "lost": 0,
     "p50_ms": 25.0, "p99_ms": 60.0, "peak_rss_mb": None, "notes": [], "failed": False},
    {"scenario": "1000 slow clients", "sent": 1000, "ok": 0, "refused": 500, "errors": 500, "lost": 0,
     "p50_ms": None, "p99_ms": None, "peak_rss_mb": 300.0, "notes": [], "failed": False},
]  # fmt: skip


def test_chaos_rows_plot_counts_and_latency_even_with_a_row_that_answered_nothing(tmp_path: Path) -> None:
    assert chaos.plot(CHAOS_ROWS, tmp_path / "chaos.png")
    assert_png(tmp_path / "chaos.png")


def test_chaos_main_links_its_plot_beside_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chaos, "run_scenarios", lambda names, seconds: CHAOS_ROWS)  # the rows, not the processes
    assert chaos.main(["--out", str(tmp_path)]) == 0
    assert_png(tmp_path / "chaos.png")
    report = (tmp_path / "chaos.md").read_text()
    assert "| overload 5x capacity | 900 |" in report and "![requests and latency per scenario](chaos.png)" in report


def test_locust_history_reads_the_aggregated_rows_as_numbers() -> None:
    rows = summary.history(FIXTURE / "locust")
    assert len(rows) == 11
    assert rows[0]["t_s"] == 0 and rows[-1]["t_s"] == 10
    assert math.isnan(rows[0]["99%"])  # N/A before the first request
    assert rows[-1]["requests"] == 232 and rows[-1]["users"] == 5 and rows[-1]["rps"] == pytest.approx(22.125)


def test_a_half_written_last_history_line_is_skipped(tmp_path: Path) -> None:
    text = (FIXTURE / "locust_stats_history.csv").read_text()
    (tmp_path / "locust_stats_history.csv").write_text(text + "1796167920,5,,Aggregated,22.5,0.0,17")
    assert len(summary.history(tmp_path / "locust")) == 11


def test_a_locust_history_plots_latency_and_throughput_and_the_summary_links_it(tmp_path: Path) -> None:
    prefix = tmp_path / "locust"
    for name in ("locust_stats.csv", "locust_stats_history.csv"):
        shutil.copy(FIXTURE / name, tmp_path / name)
    assert summary.plot(prefix, tmp_path / "loadtest.png")
    assert_png(tmp_path / "loadtest.png")
    result = summary.build(prefix)
    result["plot"] = "loadtest.png"
    assert "![latency percentiles and requests per second over time](loadtest.png)" in summary.markdown(result)


def test_no_history_no_plot(tmp_path: Path) -> None:
    assert not summary.plot(tmp_path / "locust", tmp_path / "loadtest.png")
    assert not (tmp_path / "loadtest.png").exists()


def test_the_loadtest_progress_line_reads_the_latest_history_row() -> None:
    out = io.StringIO()
    now = [0.0]
    progress = Progress("loadtest", 30, stream=out, clock=lambda: now[0], tty=False)
    now[0] = 10.0
    _tick(progress, FIXTURE / "locust")
    assert out.getvalue() == (
        "loadtest 10/30 (33%)  5 users, 232 requests, 0 failures, 22 req/s, p99 38 ms  elapsed 10.0 s  ETA 20.0 s\n"
    )
    assert progress_note([]) == "locust starting"

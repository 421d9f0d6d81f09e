"""Progress lines: counts, elapsed and ETA from an injected clock; \\r only on a terminal."""

from __future__ import annotations

import io

import pytest

from railcore.progress import Progress, duration


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def progress(total: int | None, tty: bool = False) -> tuple[Progress, io.StringIO, FakeClock]:
    clock, out = FakeClock(), io.StringIO()
    return Progress("sim", total, stream=out, clock=clock, tty=tty), out, clock


def test_each_step_is_a_line_with_count_percent_elapsed_and_eta_at_the_mean_pace() -> None:
    p, out, clock = progress(4)
    clock.now += 2.0
    p.step("nearest")
    clock.now += 4.0
    p.step("cheapest")
    assert out.getvalue().splitlines() == [
        "sim 1/4 (25%)  nearest  elapsed 2.0 s  ETA 6.0 s",
        "sim 2/4 (50%)  cheapest  elapsed 6.0 s  ETA 6.0 s",
    ]


def test_the_last_step_shows_no_eta_and_done_says_how_long_it_all_took() -> None:
    p, out, clock = progress(2)
    clock.now += 1.0
    p.step()
    clock.now += 1.5
    p.step()
    p.done("reports/sim")
    lines = out.getvalue().splitlines()
    assert lines[1] == "sim 2/2 (100%)  elapsed 2.5 s"
    assert lines[2] == "sim done: 2/2 in 2.5 s (reports/sim)"


def test_without_a_total_there_is_a_count_and_no_eta() -> None:
    p, out, clock = progress(None)
    clock.now += 3.0
    p.step("model a", n=2)
    assert out.getvalue() == "sim 2  model a  elapsed 3.0 s\n"
    assert p.eta() is None


def test_update_sets_where_a_timed_job_stands() -> None:
    p, out, clock = progress(30)
    clock.now += 10.0
    p.update(10, "1234 requests")
    assert out.getvalue() == "sim 10/30 (33%)  1234 requests  elapsed 10.0 s  ETA 20.0 s\n"


def test_a_known_pace_gives_the_eta_whatever_the_time_spent_starting() -> None:
    clock, out = FakeClock(), io.StringIO()
    p = Progress("loadtest", 30, stream=out, clock=clock, tty=False, pace=1.0)  # a step a second
    clock.now += 15.0  # 5 s of it starting up
    p.update(10)
    assert p.eta() == 20.0


def test_no_eta_before_the_first_step() -> None:
    p, _, clock = progress(5)
    clock.now += 10.0
    assert p.eta() is None
    assert "ETA" not in p.line()


def test_a_phase_is_a_line_of_its_own_that_counts_no_step() -> None:
    p, out, clock = progress(3)
    clock.now += 0.5
    p.phase("starting the hub")
    assert out.getvalue() == "sim: starting the hub  elapsed 0.5 s\n"
    assert p.count == 0


def test_on_a_terminal_steps_rewrite_one_line_and_phases_and_done_end_it() -> None:
    p, out, clock = progress(2, tty=True)
    clock.now += 1.0
    p.step("a")
    p.step("b")
    p.done()
    text = out.getvalue()
    assert text.startswith("\rsim 1/2 (50%)  a  elapsed 1.0 s  ETA 1.0 s\x1b[K\rsim 2/2 (100%)  b")
    assert text.endswith("\rsim done: 2/2 in 1.0 s\x1b[K\n")
    assert text.count("\n") == 1


def test_on_a_terminal_a_phase_keeps_the_step_line_above_it() -> None:
    p, out, _ = progress(2, tty=True)
    p.step("a")
    p.phase("next")
    assert out.getvalue() == "\rsim 1/2 (50%)  a  elapsed 0.0 s  ETA 0.0 s\x1b[K\n\rsim: next  elapsed 0.0 s\x1b[K\n"


def test_close_ends_a_line_left_open_on_a_terminal_only() -> None:
    p, out, _ = progress(2, tty=True)
    p.step()
    p.close()
    assert out.getvalue().endswith("\n")
    plain, plain_out, _ = progress(2)
    plain.step()
    plain.close()
    assert plain_out.getvalue().count("\n") == 1


def test_a_stream_that_is_not_a_terminal_gets_plain_lines_by_default() -> None:
    out = io.StringIO()
    p = Progress("x", 1, stream=out, clock=FakeClock())
    p.step()
    assert "\r" not in out.getvalue()


@pytest.mark.parametrize(
    ("seconds", "text"), [(4.24, "4.2 s"), (59.94, "59.9 s"), (185, "3 min 05 s"), (3720, "1 h 02 min")]
)
def test_durations_read_short(seconds: float, text: str) -> None:
    assert duration(seconds) == text

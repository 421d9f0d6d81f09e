"""The load test's verdict on a reply: a deadline miss is the gateway's (its own X-Gateway-Ms past the
budget, or its 504), never the load generator's lateness, which is reported on its own."""

from __future__ import annotations

import csv

from loadtests import stats


def test_a_reply_the_gateway_made_in_time_is_no_miss_however_late_the_generator_read_it():
    assert stats.judge(200, 30.0, 25.0, gateway_ms=8.0) is None
    assert stats.generator_late_ms(200, 30.0, 25.0, gateway_ms=8.0) == 22.0


def test_a_reply_the_gateway_made_past_the_budget_is_a_deadline_miss():
    failure = stats.judge(200, 30.0, 25.0, gateway_ms=27.0)
    assert failure is not None and failure.kind == stats.DEADLINE and "gateway" in failure.message
    assert stats.generator_late_ms(200, 30.0, 25.0, gateway_ms=27.0) is None


def test_without_the_gateway_s_time_the_client_s_clock_judges():
    failure = stats.judge(200, 30.0, 25.0)
    assert failure is not None and failure.kind == stats.DEADLINE
    assert stats.judge(200, 20.0, 25.0) is None and stats.generator_late_ms(200, 20.0, 25.0, gateway_ms=5.0) is None


def test_generator_lateness_is_tallied_apart_from_the_outcomes():
    tallies = stats.RailgateStats()
    tallies.record_generator_late(22.0)
    tallies.record_generator_late(3.0)
    merged = stats.RailgateStats()
    merged.merge_wire(tallies.to_wire())
    assert merged.generator_late.total == 2 and merged.generator_late.max_ms == 22.0
    assert merged.total == 0  # no request outcome was recorded


def test_each_reply_s_time_is_split_between_the_gateway_and_the_rest():
    tallies = stats.RailgateStats()
    tallies.record_split(30.0, 8.0)
    tallies.record_split(12.0, None)  # no X-Gateway-Ms: nothing to split
    tallies.record_send_late(4.0)
    gateway, outside = tallies.lateness["gateway"], tallies.lateness["outside"]
    assert (gateway.total, gateway.max_ms, outside.total, outside.max_ms) == (1, 8.0, 1, 22.0)
    merged = stats.RailgateStats()
    merged.merge_wire(tallies.to_wire())  # a worker's tallies reach the master's
    assert merged.lateness["outside"].max_ms == 22.0 and merged.lateness["send_late"].max_ms == 4.0
    assert merged.total == 0  # no request outcome was recorded
    assert any(line.startswith("send_late ms") for line in merged.lateness_lines())


def test_the_lateness_csv_reaches_the_summary(tmp_path):
    from loadtests import summary

    tallies = stats.RailgateStats()
    for gateway_ms, client_ms in [(4.0, 6.0), (5.0, 30.0)]:
        tallies.record_split(client_ms, gateway_ms)
    stats.write_csvs(tallies, tmp_path / "locust")
    result = summary.build(tmp_path / "locust")
    by_measure = {r["measure"]: r for r in result["lateness"]}
    assert by_measure["outside"]["samples"] == 2 and by_measure["outside"]["max_ms"] == 25.0
    assert by_measure["gateway"]["max_ms"] == 5.0 and by_measure["send_late"]["samples"] == 0
    assert "## Gateway's time and the load generator's (not failures)" in summary.markdown(result)


def test_the_summary_folds_the_gateway_s_late_replies_into_one_line_per_budget():
    from loadtests import summary

    rows = [
        {
            "Method": "POST",
            "Name": "anomaly [msgpack]",
            "Error": f"deadline miss: the gateway took {ms} ms > budget 10 ms",
        }
        for ms in (13, 17)
    ]
    for row, count in zip(rows, ("2", "1"), strict=True):
        row["Occurrences"] = count
    (folded,) = summary.top_failures(rows)
    assert (folded["error"], folded["occurrences"]) == ("deadline miss: over budget 10 ms (worst 17 ms)", 3)


def test_failed_requests_keep_their_time_and_the_gateway_s_split_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(stats, "MAX_FAILED_ROWS", 3)
    worker = stats.RailgateStats()
    miss = stats.judge(504, 13.0, 10.0)
    headers = {"X-Served-By": "local", "X-Queue-Ms": "0.2", "X-Backend-Ms": "0.3", "X-Gateway-Ms": "11.8"}
    for i in range(5):  # past the bound: the first ones are kept, memory is not
        worker.record_failed(end_s=100.0 + i, name="anomaly [msgpack]", ms=13.0, exception=miss, headers=headers)
    assert len(worker.failed) == 3
    master = stats.RailgateStats()
    master.merge_wire(worker.to_wire())
    master.merge_wire(worker.to_wire())  # a second worker's rows: still bounded
    stats.write_csvs(master, tmp_path / "locust")
    with open(tmp_path / "locust_failed.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and rows[0]["End (unix s)"] == "100.0" and rows[0]["Kind"] == stats.DEADLINE
    assert (rows[0]["X-Served-By"], rows[0]["X-Gateway-Ms"], rows[0]["X-Route-Reason"]) == ("local", "11.8", "")
    assert "504" in rows[0]["Error"]

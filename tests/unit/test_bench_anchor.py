"""The benchmark's nginx anchor: a machine without nginx says so loudly, and CI fails; nothing is skipped quietly."""

from __future__ import annotations

import pytest

from bench import run


@pytest.fixture
def no_nginx(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run, "nginx_binary", lambda: None)
    monkeypatch.setattr(run, "start_hub", _must_not_start)


def _must_not_start(*args: object, **kwargs: object) -> None:
    raise AssertionError("the bench started a hub although its nginx anchor is missing under CI")


def test_missing_nginx_under_ci_fails_before_anything_starts(no_nginx, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("CI", "true")
    status = run.main(["--quick", "--runs", "1", "--only", "overhead", "--out", str(tmp_path)])
    assert status != 0
    assert "MISSING nginx (install nginx-light)" in capsys.readouterr().out


def test_missing_nginx_outside_ci_is_a_printed_row_not_a_silent_skip():
    assert run.anchor_rows(None) == ["MISSING nginx (install nginx-light): the nginx anchor rows are not measured"]
    assert run.anchor_rows("/usr/sbin/nginx") == []

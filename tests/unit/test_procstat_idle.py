"""bench.procstat.idle_policy: what the benchmarks say about how idle cores wait, read from a sysfs tree
laid out as Linux lays it out (a temporary directory standing in for /sys)."""

from __future__ import annotations

from pathlib import Path

from bench.procstat import idle_policy


def _sysfs(root: Path, driver: str | None, poll_ns: str | None) -> Path:
    if driver is not None:
        (root / "devices/system/cpu/cpuidle").mkdir(parents=True)
        (root / "devices/system/cpu/cpuidle/current_driver").write_text(driver + "\n")
    if poll_ns is not None:
        (root / "module/haltpoll/parameters").mkdir(parents=True)
        (root / "module/haltpoll/parameters/guest_halt_poll_ns").write_text(poll_ns + "\n")
    return root


def test_a_vm_whose_idle_cores_halt_at_once_is_named_as_such(tmp_path: Path) -> None:
    text = idle_policy(_sysfs(tmp_path, "haltpoll", "0"))
    assert text is not None
    assert text.startswith("cpuidle driver haltpoll, guest_halt_poll_ns=0")
    assert "VM exit" in text


def test_a_polling_guest_is_not_said_to_halt_at_once(tmp_path: Path) -> None:
    text = idle_policy(_sysfs(tmp_path, "haltpoll", "200000"))
    assert text == "cpuidle driver haltpoll, guest_halt_poll_ns=200000"


def test_bare_metal_gives_the_driver_alone(tmp_path: Path) -> None:
    assert idle_policy(_sysfs(tmp_path, "intel_idle", None)) == "cpuidle driver intel_idle"


def test_no_cpuidle_in_sysfs_is_unknown(tmp_path: Path) -> None:
    assert idle_policy(_sysfs(tmp_path, None, "0")) is None

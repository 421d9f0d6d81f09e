"""System parts a test needs (a browser, Prometheus): found, or skipped with the package to install.

Under ``CI=true`` a missing part fails the test instead: CI's machine is set up by ``make sysdeps``,
so a missing part there is a broken install step, not an optional extra.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLAYWRIGHT_CORE = ROOT / ".venv" / "node" / "node_modules" / "playwright-core"


def missing(what: str, install: str) -> NoReturn:
    """Skip (or, under CI, fail) naming what is missing and how ``make sysdeps`` installs it."""
    message = f"{what} is missing: {install} (make sysdeps does this as root)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def binary(name: str, package: str) -> str:
    """The path of ``name`` on PATH, else skip/fail naming the Debian package that brings it."""
    path = shutil.which(name)
    if path is None:
        missing(f"`{name}`", f"apt-get install -y {package}")
    return path

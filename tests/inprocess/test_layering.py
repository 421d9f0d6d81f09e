"""The arrows of the layout hold: the product never loads dev tooling, the core stays a core.

Imports are checked twice: what a fresh interpreter actually loads (``sys.modules``), and the
static import graph read from the source by ``python -m devtools.imports``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from devtools import imports, procs

ROOT = Path(__file__).resolve().parents[2]
PRODUCT_FILES = ("pyproject.toml", "README.md", "gateway", "edge", "railcore")
NEVER_ON_A_DEVICE = ("gateway", "tritonclient", "hub", "devtools", "models", "sklearn", "grpc")


def loaded_after(statement: str) -> list[str]:
    """The top-level packages a fresh interpreter holds in ``sys.modules`` after ``statement``."""
    script = f"import json, sys\n{statement}\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    done = procs.run([sys.executable, "-c", script], timeout_s=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_importing_the_edge_runtime_loads_no_server_hub_client_or_dev_tool() -> None:
    loaded = loaded_after("import edge, edge.runtime, edge.server")
    assert "edge" in loaded and "railcore" in loaded
    assert [name for name in NEVER_ON_A_DEVICE if name in loaded] == []


def test_importing_the_core_loads_neither_gateway_nor_edge_nor_dev_tooling() -> None:
    statement = (
        "import pkgutil, importlib, railcore\n"
        "for m in pkgutil.walk_packages(railcore.__path__, 'railcore.'): importlib.import_module(m.name)"
    )
    loaded = loaded_after(statement)
    assert [name for name in ("edge", *NEVER_ON_A_DEVICE) if name in loaded] == []


def test_the_import_graph_command_finds_every_rule_kept() -> None:
    done = procs.run([sys.executable, "-m", "devtools.imports"], timeout_s=60)
    assert done.returncode == 0, done.stdout
    assert "railcore  -> -" in done.stdout, "the core imports no other railgate package"
    assert "all kept" in done.stdout


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize(
    ("path", "source", "broken"),
    [
        ("gateway/backends/local.py", "from hub.repository import x\n", "the product never imports dev tooling"),
        ("edge/store.py", "def later():\n    import devtools.procs\n", "the product never imports dev tooling"),
        ("railcore/codec.py", "from gateway.config import Limits\n", "the shared core imports neither"),
        ("railcore/deep/codec.py", "from ...edge import engine\n", "the shared core imports neither"),
        ("edge/engine.py", "from gateway.backends.local import _bytes_elements\n", "never imports the gateway"),
    ],
)
def test_the_rules_reject_a_forbidden_import(tmp_path: Path, path: str, source: str, broken: str) -> None:
    tree = _tree(tmp_path, {path: source, "hub/repository.py": "", "gateway/__init__.py": ""})
    (line,) = imports.violations(imports.imports_in(tree))
    assert line.startswith(f"{path}:") and broken in line
    assert imports.main(["--root", str(tree)]) == 1


def test_the_rules_allow_a_dev_tool_chosen_by_name_and_dev_tools_importing_the_product(tmp_path: Path) -> None:
    tree = _tree(
        tmp_path,
        {
            "gateway/cli.py": "import importlib\ndef tool(name):\n    return importlib.import_module(name)\n",
            "devtools/demo.py": "from gateway import cli\nfrom railcore import errors\n",
            "edge/remote.py": "from railcore.protocol import codec\n",
        },
    )
    found = imports.imports_in(tree)
    assert imports.violations(found) == []
    assert "devtools  -> railcore (1), gateway (1)" in imports.render(found)


def _can_build_wheels() -> bool:
    """setuptools builds wheels itself from 70.1 on; before that it needs the ``wheel`` package."""
    version = tuple(int(p) for p in importlib.metadata.version("setuptools").split(".")[:2])
    return version >= (70, 1) or importlib.util.find_spec("wheel") is not None


def test_the_product_wheel_holds_the_product_and_no_dev_tooling(tmp_path: Path) -> None:
    """Built, as the Dockerfile builds it, from a copy holding only the product's files."""
    source = tmp_path / "src"
    source.mkdir()
    for name in PRODUCT_FILES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, source / name)
    if _can_build_wheels():
        cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", "out", "src"]
        done = procs.run(cmd, cwd=tmp_path, timeout_s=120)
        assert done.returncode == 0, done.stderr
        (wheel,) = (tmp_path / "out").glob("railgate-*.whl")
        files = [n for n in zipfile.ZipFile(wheel).namelist() if ".dist-info/" not in n]
    else:  # setuptools' own build: what a wheel of this setuptools would hold, less its metadata
        cmd = [sys.executable, "-c", "from setuptools import setup; setup()", "-q", "build", "--build-base", "../b"]
        done = procs.run(cmd, cwd=source, timeout_s=120, stdout=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr
        files = [p.relative_to(tmp_path / "b" / "lib").as_posix() for p in (tmp_path / "b" / "lib").rglob("*")]
    assert "railcore/model_config.binpb" in files
    assert {"gateway", "edge", "railcore"} == {f.split("/")[0] for f in files}
    assert "gateway/cli.py" in files and "edge/runtime.py" in files

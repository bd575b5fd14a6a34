"""The import rule of DESIGN.md, checked on the source: stage modules import core and algorithm
packages but never each other; core never imports stages; no stage draws figures; and the
entry points keep numba's cache out of the installed package."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import subprocess_env

SRC = Path(__file__).resolve().parents[2] / "src" / "calipers"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package of the module
                base = ".".join(path.relative_to(SRC.parent).with_suffix("").parts[:-node.level])
                out.add(f"{base}.{node.module}" if node.module else base)
            else:
                out.add(node.module)
    return out


STAGE_MODULES = sorted(p for p in (SRC / "stages").glob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("path", STAGE_MODULES, ids=lambda p: p.name)
def test_no_stage_module_imports_another(path):
    others = {m for m in imported_modules(path) if m.startswith("calipers.stages")}
    assert not others, f"{path.name} imports {sorted(others)}: shared pieces belong in calipers.core"


@pytest.mark.parametrize("path", STAGE_MODULES, ids=lambda p: p.name)
def test_no_figure_is_drawn_in_a_stage_module(path):
    text = path.read_text()
    assert "matplotlib" not in text and "plt." not in text and "pyplot" not in text, \
        f"{path.name} draws figures: they belong in calipers.validate.plots"


def test_core_does_not_import_stages():
    for path in (SRC / "core").glob("*.py"):
        bad = {m for m in imported_modules(path) if m.startswith("calipers.stages")}
        assert not bad, f"core/{path.name} imports {sorted(bad)}"


def test_entry_point_sends_numba_cache_to_a_user_directory(tmp_path):
    """``python -m calipers`` (what ceci runs for each stage) sets NUMBA_CACHE_DIR before numba is
    imported, so compiled kernels are never cached inside the installed package."""
    env = subprocess_env()
    env.pop("NUMBA_CACHE_DIR", None)
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    code = ("import sys; sys.argv = ['calipers']; from calipers.__main__ import main; main(); "
            "import numba; print('CACHE', numba.config.CACHE_DIR)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"CACHE {tmp_path / 'cache' / 'calipers' / 'numba'}" in proc.stdout


def test_configure_runtime_keeps_an_explicit_cache_dir(monkeypatch, tmp_path):
    from calipers.cli import configure_runtime

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))
    configure_runtime()
    assert os.environ["NUMBA_CACHE_DIR"] == str(tmp_path / "mine")
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    configure_runtime()
    assert os.environ["NUMBA_CACHE_DIR"] == str(tmp_path / "xdg" / "calipers" / "numba")

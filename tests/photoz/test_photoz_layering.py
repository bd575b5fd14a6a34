"""DESIGN.md layering for the photo-z algorithm package, and numba's on-disk cache."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import calipers.photoz

PHOTOZ = Path(calipers.photoz.__file__).parent
FORBIDDEN = ("calipers.core", "calipers.stages", "ceci")


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("path", sorted(PHOTOZ.glob("*.py")), ids=lambda p: p.name)
def test_photoz_imports_no_core_stage_or_ceci_and_opens_no_file(path):
    bad = {m for m in imported_modules(path) if m.startswith(FORBIDDEN)}
    assert not bad, f"{path.name} imports {sorted(bad)}"
    opens = [node.lineno for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open"]
    assert not opens, f"{path.name} opens files at lines {opens}"


def test_imports_check_sees_a_core_import(tmp_path):
    """The check above can fail."""
    f = tmp_path / "x.py"
    f.write_text("from calipers.core.errors import ModelMismatchError\nimport ceci\n")
    assert {"calipers.core.errors", "ceci"} <= imported_modules(f)


def test_kernels_cache_only_into_numba_cache_dir():
    """numba's on-disk cache is used only with a cache directory (NUMBA_CACHE_DIR), never next to
    the package's source."""
    from numba import config
    from numba.core.caching import NullCache

    from calipers.photoz import _kernels

    dispatchers = [v for v in vars(_kernels).values() if hasattr(v, "py_func") and hasattr(v, "_cache")]
    assert len(dispatchers) >= 10
    for d in dispatchers:
        if config.CACHE_DIR:
            assert d._cache._cache_path.startswith(str(config.CACHE_DIR)), d
        else:
            assert isinstance(d._cache, NullCache), d


def test_kernel_cache_files_go_to_numba_cache_dir_and_not_the_package(tmp_path):
    cache = tmp_path / "numba_cache"
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), OMP_NUM_THREADS="1")
    code = "import numpy as np; from calipers.photoz._kernels import silu_; a = np.ones(8, np.float32); silu_(a); print(a[0])"
    before = sorted(str(p) for p in PHOTOZ.rglob("*.nb[ic]"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert abs(float(out.stdout) - 1 / (1 + 1 / 2.718281828)) < 1e-4
    assert any(cache.rglob("*silu_*.nbi")), sorted(cache.rglob("*"))
    assert sorted(str(p) for p in PHOTOZ.rglob("*.nb[ic]")) == before

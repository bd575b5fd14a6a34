"""ShiftTest passes two random halves of DC2 and fails a faint-end target (p < 0.01)."""
import json

import pytest
import yaml

from calipers.core.errors import GateFailed
from conftest import random_rows, run_stage, subset, write_catalog


def config(tmp_path):
    path = tmp_path / "cfg.yml"
    path.write_text(yaml.safe_dump({"ShiftTest": {"max_rows": 400, "n_permutations": 100},
                                    "CatalogCut": {"column": "mag_i_lsst", "min_value": 24.0}}))
    return str(path)


def test_random_halves_pass_and_faint_end_fails(tmp_path, dc2):
    n = len(dc2["id"])
    a = random_rows(n, 1500, seed=1)
    b = random_rows(n, 1500, seed=2, exclude=a)
    ref = write_catalog(tmp_path / "ref.hdf5", subset(dc2, a))
    same = write_catalog(tmp_path / "same.hdf5", subset(dc2, b))
    cfg = config(tmp_path)
    run_stage("ShiftTest", cfg, reference_catalog=ref, target_catalog=same, shift_report=str(tmp_path / "ok"))
    assert json.loads((tmp_path / "ok" / "report.json").read_text())["passed"] is True

    faint = tmp_path / "faint.hdf5"
    run_stage("CatalogCut", cfg, catalog=same, selected=str(faint))
    with pytest.raises(GateFailed) as err:
        run_stage("ShiftTest", cfg, reference_catalog=ref, target_catalog=str(faint),
                  shift_report=str(tmp_path / "shift"))
    assert "p_value" in str(err.value)
    report = json.loads((tmp_path / "shift.FAILED" / "report.json").read_text())
    assert report["metrics"]["mmd"]["p_value"] < 0.01

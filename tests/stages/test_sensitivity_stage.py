"""SensitivityGate with the tiny model: the report is written, a tiny limit fails the gate (or only
warns), a large one passes, the same seed gives the same numbers, and rows are a random subset."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from calipers.core.errors import ConfigError, GateFailed, ModelMismatchError
from calipers.photoz.preprocess import nondetected
from conftest import GROUP, TRAIN_100, VALID_10, read_catalog, run_stage, write_catalog

LARGE = {"max_nz_mean_shift": 10.0, "max_point_shift_p68": 10.0, "max_noise_nz_mean_shift": 10.0,
         "max_noise_point_shift_p68": 10.0}


def config(tmp_path, name="cfg.yml", **options) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"global": {"hdf5_groupname": GROUP}, "SensitivityGate": options}))
    return str(path)


def report(directory) -> dict:
    with open(directory / "report.json") as fh:
        return json.load(fh)


def run(tmp_path, model, out, catalog=VALID_10, **options):
    cfg = config(tmp_path, f"{out}.yml", **options)
    run_stage("SensitivityGate", cfg, model=model, catalog=catalog, sensitivity_report=str(tmp_path / out))
    return tmp_path / out


def test_report_written_and_large_limits_pass(tmp_path, tiny_model_dir):
    out = run(tmp_path, tiny_model_dir, "ok", **LARGE)
    rep = report(out)
    assert rep["passed"] is True
    assert [c["name"] for c in rep["checks"]] == ["nz_mean_shift_zero_point", "point_shift_p68_zero_point",
                                                  "nz_mean_shift_noise", "point_shift_p68_noise"]
    m = rep["metrics"]
    names = [r["name"] for r in m["rows"]]
    assert names == ["noise"] + [f"{b}{s}0.02" for b in list("ugrizy") + ["all"] for s in "+-"]
    assert m["n_rows_used"] == m["n_catalog_rows"] == m["n_galaxies"] == 10
    assert m["worst_band"] in list("ugrizy") and np.isfinite(m["nz_mean"])
    worst = max(abs(r["nz_mean_shift"]) for r in m["rows"] if r["kind"] == "zero_point")
    assert rep["checks"][0]["value"] == pytest.approx(worst)
    assert (out / "sensitivity.png").stat().st_size > 0 and (out / "index.html").exists()


def test_tiny_limit_fails_the_gate_or_warns(tmp_path, tiny_model_dir):
    with pytest.raises(GateFailed) as err:
        run(tmp_path, tiny_model_dir, "bad", **(LARGE | {"max_nz_mean_shift": 1e-12}))
    assert "nz_mean_shift_zero_point" in str(err.value) and "point_shift" not in str(err.value)
    rep = report(tmp_path / "bad.FAILED")
    assert rep["passed"] is False and not (tmp_path / "bad").exists()
    out = run(tmp_path, tiny_model_dir, "warned", on_fail="warn", **(LARGE | {"max_noise_point_shift_p68": 1e-12}))
    rep = report(out)
    assert rep["passed"] is False
    assert [c["name"] for c in rep["checks"] if not c["passed"]] == ["point_shift_p68_noise"]


def test_same_seed_same_numbers(tmp_path, tiny_model_dir):
    a = report(run(tmp_path, tiny_model_dir, "a", seed=3, **LARGE))["metrics"]
    b = report(run(tmp_path, tiny_model_dir, "b", seed=3, **LARGE))["metrics"]
    c = report(run(tmp_path, tiny_model_dir, "c", seed=4, **LARGE))["metrics"]
    assert a == b
    assert a["rows"][0] != c["rows"][0]                       # the noise draws follow the seed
    assert a["rows"][1:] == c["rows"][1:]                     # zero-point offsets do not


def test_max_rows_takes_a_seeded_random_subset_read_in_chunks(tmp_path, tiny_model_dir):
    """A catalog sorted so that its first half is u-band non-detected: the subset holds both halves,
    exactly the rows the seed picks."""
    cols = read_catalog(TRAIN_100)
    cols["mag_u_lsst"] = cols["mag_u_lsst"].copy()
    cols["mag_u_lsst"][:50] = 99.0
    path = write_catalog(tmp_path / "sorted.hdf5", cols)
    m = report(run(tmp_path, tiny_model_dir, "sub", catalog=path, seed=2, max_rows=30, chunk_size=7, n_noise=0,
                   **LARGE))["metrics"]
    assert m["n_rows_used"] == 30 and m["n_catalog_rows"] == 100
    rows = np.sort(np.random.default_rng([2, 1]).choice(100, 30, replace=False))
    expect = int(nondetected(cols["mag_u_lsst"][rows]).sum())
    assert 0 < m["n_nondetected"]["u"] == expect < 30
    assert [r["name"] for r in m["rows"]][0] == "u+0.02"     # n_noise 0: no noise row


def test_only_zero_point_or_only_noise_checks(tmp_path, tiny_model_dir):
    rep = report(run(tmp_path, tiny_model_dir, "zp", n_noise=0, all_bands=False, **LARGE))
    assert [c["name"] for c in rep["checks"]] == ["nz_mean_shift_zero_point", "point_shift_p68_zero_point"]
    assert len(rep["metrics"]["rows"]) == 12
    rep = report(run(tmp_path, tiny_model_dir, "noise", zero_point=0.0, n_noise=3, **LARGE))
    assert [c["name"] for c in rep["checks"]] == ["nz_mean_shift_noise", "point_shift_p68_noise"]
    assert rep["metrics"]["rows"][0]["n_draws"] == 3 and rep["metrics"]["worst_band"] is None


@pytest.mark.parametrize("options, error, text", [
    ({"zero_point": 0.0, "n_noise": 0}, ConfigError, "not both 0"),
    ({"point_estimate": "zbest"}, ConfigError, "point_estimate"),
    ({"max_nz_mean_shift": 0.0}, ConfigError, "max_nz_mean_shift"),
    ({"max_rows": 0}, ConfigError, "max_rows"),
    ({"on_fail": "ignore"}, ConfigError, "on_fail"),
    ({"bands": ["g", "r", "i", "z"]}, ModelMismatchError, "trained on bands"),
])
def test_bad_options_are_errors(tmp_path, tiny_model_dir, options, error, text):
    with pytest.raises(error, match=text):
        run(tmp_path, tiny_model_dir, "x", **options)
    assert not (tmp_path / "x").exists()

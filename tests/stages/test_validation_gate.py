"""ValidationGate: passes an honest p(z), stops on shrunk widths, NaNs and the training-n(z) trap."""
import json

import numpy as np
import pytest
import qp
import yaml

from calipers.core.errors import GateFailed
from conftest import run_stage, write_catalog


def toy(tmp_path, n=3000, width_factor=1.0, nan_rows=(), trainz=False, seed=0):
    """A calibrated Gaussian p(z) per galaxy (sigma = 0.03(1+z)), optionally corrupted."""
    rng = np.random.default_rng(seed)
    z = rng.gamma(4.0, 0.2, n).clip(0.02, 2.9)
    sigma = 0.03 * (1 + z)
    centre = z + rng.normal(0, sigma)
    if trainz:  # every galaxy gets the training-set n(z)
        hist, edges = np.histogram(z, bins=60, range=(0, 3), density=True)
        xv = 0.5 * (edges[1:] + edges[:-1])
        ens = qp.Ensemble(qp.interp, data=dict(xvals=xv, yvals=np.tile(hist, (n, 1))))
    else:
        means = centre.copy()
        means[list(nan_rows)] = np.nan
        ens = qp.Ensemble(qp.mixmod, data=dict(means=means[:, None], stds=(width_factor * sigma)[:, None],
                                               weights=np.ones((n, 1))))
    pz = tmp_path / "pz.hdf5"
    ens.write_to(str(pz))
    truth = write_catalog(tmp_path / "truth.hdf5", {"redshift": z})
    return str(pz), truth


def gate(tmp_path, pz, truth, **options):
    cfg = tmp_path / "gate.yml"
    cfg.write_text(yaml.safe_dump({"ValidationGate": options}))
    report = tmp_path / "report"
    run_stage("ValidationGate", str(cfg), pz=pz, truth=truth, report=str(report))
    return report


def test_honest_pz_passes_and_writes_report(tmp_path):
    report = gate(tmp_path, *toy(tmp_path))
    data = json.loads((report / "report.json").read_text())
    assert data["passed"] is True
    assert data["metrics"]["cde_loss"] < -3 and data["metrics"]["ece"] < 0.01
    for f in ("index.html", "pit_histogram.png", "coverage.png", "reliability.png"):
        assert (report / f).exists()
    assert "PASSED" in (report / "index.html").read_text()


def test_shrunk_widths_fail_with_values_and_thresholds(tmp_path):
    pz, truth = toy(tmp_path, width_factor=0.5)
    with pytest.raises(GateFailed) as err:
        gate(tmp_path, pz, truth)
    msg = str(err.value)
    assert "pit_ks" in msg and "cov68" in msg and "needs" in msg
    assert any(f.startswith("ece") for f in err.value.failures)  # interval probabilities over-confident
    assert not (tmp_path / "report").exists()  # the declared output is not there
    failed = tmp_path / "report.FAILED"
    assert json.loads((failed / "report.json").read_text())["passed"] is False
    assert str(failed) in msg


def test_nan_input_fails(tmp_path):
    pz, truth = toy(tmp_path, nan_rows=[3, 10])
    with pytest.raises(GateFailed, match="invalid_fraction"):
        gate(tmp_path, pz, truth)


def test_training_nz_for_everyone_is_rejected_although_pit_is_fine(tmp_path):
    pz, truth = toy(tmp_path, trainz=True)
    with pytest.raises(GateFailed) as err:
        gate(tmp_path, pz, truth)
    failures = err.value.failures
    assert any(f.startswith("cde_loss") for f in failures)
    assert not any(f.startswith("pit_ks") for f in failures)  # PIT alone would have passed it


def test_on_fail_warn_goes_on(tmp_path):
    pz, truth = toy(tmp_path, width_factor=0.5)
    report = gate(tmp_path, pz, truth, on_fail="warn")
    assert json.loads((report / "report.json").read_text())["passed"] is False


def test_gate_over_two_ranks_equals_serial(tmp_path):
    """Ranks score their chunks; rank 0 merges the accumulators: the report equals the serial one."""
    from calipers.stages import ValidationGate
    from conftest import run_as_ranks

    pz, truth = toy(tmp_path, nan_rows=[7])
    cfg = tmp_path / "g.yml"
    cfg.write_text(yaml.safe_dump({"ValidationGate": {"chunk_size": 400, "on_fail": "warn"}}))
    run_stage("ValidationGate", str(cfg), pz=pz, truth=truth, report=str(tmp_path / "serial"))
    run_as_ranks(ValidationGate, {"pz": pz, "truth": truth, "report": str(tmp_path / "mpi"), "config": str(cfg)})
    serial = json.loads((tmp_path / "serial" / "report.json").read_text())
    mpi = json.loads((tmp_path / "mpi" / "report.json").read_text())
    assert mpi["metrics"] == serial["metrics"] and mpi["checks"] == serial["checks"]
    assert serial["metrics"]["n_invalid"] == 1


def test_failing_gate_raises_on_every_rank(tmp_path):
    from calipers.stages import ValidationGate
    from conftest import run_as_ranks

    pz, truth = toy(tmp_path, width_factor=0.5)
    cfg = tmp_path / "g.yml"
    cfg.write_text(yaml.safe_dump({"ValidationGate": {"chunk_size": 500}}))
    with pytest.raises(GateFailed, match="pit_ks"):
        run_as_ranks(ValidationGate, {"pz": pz, "truth": truth, "report": str(tmp_path / "r"), "config": str(cfg)})
    assert (tmp_path / "r.FAILED" / "report.json").exists() and not (tmp_path / "r").exists()

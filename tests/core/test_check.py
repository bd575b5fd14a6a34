"""``calipers check`` reports every wiring/config/input problem of a pipeline at once."""
from pathlib import Path

import numpy as np
import yaml
from conftest import write_catalog

from calipers.cli import main as cli
from calipers.core.check import check_pipeline

REPO = Path(__file__).resolve().parents[2]


def test_shipped_pipelines_are_clean():
    for name in ("photoz", "photoz_to_cl", "photoz_faint_shift", "rail_flexzboost_calibrated", "sbi_gaussian"):
        assert check_pipeline(str(REPO / "pipelines" / f"{name}.yml")) == [], name


def test_four_problems_in_one_report(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    pipe = yaml.safe_load((REPO / "pipelines" / "photoz.yml").read_text())
    stages = yaml.safe_load((REPO / "stages" / "photoz.yml").read_text())
    stages["PZInform"]["n_member"] = 3                              # 1. misspelt key
    stages["PZInform"]["redshift_column"] = "z_spec"                # 2. a column the catalog lacks
    train = write_catalog(tmp_path / "train.hdf5", {f"mag_{b}_lsst": np.ones(3) for b in "ugrizy"}
                          | {f"mag_err_{b}_lsst": np.ones(3) for b in "ugrizy"} | {"redshift": np.ones(3)})
    pipe["inputs"]["training_catalog"] = train
    pipe["inputs"]["target_catalog"] = str(tmp_path / "missing.hdf5")   # 3. a missing input file
    for st in pipe["stages"]:
        if st["name"] == "ValidationGate":
            st["aliases"]["pz"] = "model"                           # 4. p(z) input wired to a model directory
    cfg = tmp_path / "stages.yml"
    cfg.write_text(yaml.safe_dump(stages))
    pipe["config"] = str(cfg)
    path = tmp_path / "pipe.yml"
    path.write_text(yaml.safe_dump(pipe))
    problems = [str(p) for p in check_pipeline(str(path))]
    text = "\n".join(problems)
    assert "unknown config key 'n_member'; did you mean 'n_members'?" in text
    assert "lacks column(s) ['z_spec']" in text
    assert "missing.hdf5 does not exist" in text
    assert "expects QPEnsembleFile but stage PZInform writes ModelDir" in text
    assert len(problems) == 4, problems
    assert cli(["check", str(path)]) == 1
    assert "4 problem(s)" in capsys.readouterr().out
    assert cli(["run", str(path)]) == 1                             # refuses to start
    assert "not running" in capsys.readouterr().err

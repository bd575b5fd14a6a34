"""``calipers check`` reports every wiring/config/input problem of a pipeline at once."""
from pathlib import Path

import numpy as np
import yaml
from conftest import write_catalog

from calipers.cli import main as cli
from calipers.core.check import check_pipeline

REPO = Path(__file__).resolve().parents[2]


def test_shipped_pipelines_are_clean():
    for name in ("photoz", "photoz_target_split", "photoz_mpi", "photoz_parsl", "photoz_to_cl", "photoz_faint_shift",
                 "rail_flexzboost_calibrated", "sbi_gaussian"):
        assert check_pipeline(str(REPO / "pipelines" / f"{name}.yml")) == [], name


def test_four_problems_in_one_report(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    pipe = yaml.safe_load((REPO / "pipelines" / "photoz_target_split.yml").read_text())
    stages = yaml.safe_load((REPO / "stages" / "photoz_target_split.yml").read_text())
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


# ---------------------------------------------------------------------------- one set of keys
def _split_pipeline(tmp_path, catalog, section: dict, global_: dict) -> tuple[Path, Path]:
    cfg = tmp_path / "stages.yml"
    cfg.write_text(yaml.safe_dump({"global": global_, "CatalogSplit": section}))
    pipe = tmp_path / "pipe.yml"
    pipe.write_text(yaml.safe_dump({
        "modules": "calipers.stages", "launcher": {"name": "mini"}, "site": {"name": "local"},
        "stages": [{"name": "CatalogSplit", "nprocess": 1}], "inputs": {"catalog": catalog},
        "config": str(cfg), "output_dir": str(tmp_path / "out"), "log_dir": str(tmp_path / "out")}))
    return pipe, cfg


def test_check_and_a_stage_run_accept_the_same_keys(tmp_path):
    """`calipers check` and a stage run use one set of ceci keys and one rule for stage and
    global sections: every key is accepted by both or refused by both."""
    from calipers.core import check, stage
    from calipers.core.errors import ConfigError
    from calipers.stages import CatalogSplit

    assert check.CECI_KEYS is stage.CECI_KEYS
    catalog = write_catalog(tmp_path / "cat.hdf5", {"a": np.arange(4.0)})
    candidates = sorted(stage.CECI_KEYS - {"config", "comm", "aliases", "name"}) + [
        "fraction_a", "seed", "chunk_size",                # CatalogSplit options
        "n_members", "max_pit_ks", "redshift_column",       # options of other stages
        "part_a", "catalog",                                # its tags
        "fraction_b", "n_member", "threads"]                # nobody's
    verdicts = {}
    for where in ("section", "global"):
        for key in candidates:
            value = 0.5 if key in ("fraction_a", "max_pit_ks") else 1
            sec, glob = ({key: value}, {}) if where == "section" else ({}, {key: value})
            pipe, cfg = _split_pipeline(tmp_path, catalog, sec, glob)
            by_check = not any(key in p.what for p in check.check_pipeline(str(pipe)))
            try:
                CatalogSplit.make_stage(catalog=catalog, part_a=str(tmp_path / "a.hdf5"),
                                        part_b=str(tmp_path / "b.hdf5"), config=str(cfg))
                by_run = True
            except ConfigError as err:
                assert key in str(err)
                by_run = False
            verdicts[(where, key)] = (by_check, by_run)
    disagree = {k: v for k, v in verdicts.items() if v[0] != v[1]}
    assert not disagree, disagree
    assert verdicts[("section", "n_member")] == (False, False)
    assert verdicts[("section", "threads_per_process")] == (True, True)
    assert verdicts[("global", "max_pit_ks")] == (True, True)
    assert verdicts[("section", "max_pit_ks")] == (False, False)


# ---------------------------------------------------------------------------- through CatalogSplit
def _photoz_pipeline(tmp_path, target: str | None = None, edit=lambda stages: None,
                     name: str = "photoz_target_split", input_name: str = "target_catalog") -> Path:
    """pipelines/<name>.yml and stages/<name>.yml as shipped, with another catalog as input
    ``input_name`` and/or the stage configuration changed by ``edit``, written to ``tmp_path``."""
    pipe = yaml.safe_load((REPO / "pipelines" / f"{name}.yml").read_text())
    stages = yaml.safe_load((REPO / "stages" / f"{name}.yml").read_text())
    edit(stages)
    cfg = tmp_path / "stages.yml"
    cfg.write_text(yaml.safe_dump(stages))
    if target is not None:
        pipe["inputs"][input_name] = target
    pipe["config"] = str(cfg)
    path = tmp_path / "pipe.yml"
    path.write_text(yaml.safe_dump(pipe))
    return path


def test_check_follows_columns_through_catalog_split(tmp_path, train100):
    """The target catalog reaches PZCalibrate and ValidationGate only through CatalogSplit, whose
    outputs do not exist at check time: the columns they need are checked on the target."""
    no_z = write_catalog(tmp_path / "no_z.hdf5", {k: v for k, v in train100.items() if k != "redshift"})
    problems = [str(p) for p in check_pipeline(str(_photoz_pipeline(tmp_path, no_z)))]
    assert len(problems) == 1, problems
    assert no_z in problems[0] and "lacks column(s) ['redshift']" in problems[0]
    assert "through CatalogSplit" in problems[0]
    no_u = write_catalog(tmp_path / "no_u.hdf5", {k: v for k, v in train100.items() if k != "mag_u_lsst"})
    problems = [str(p) for p in check_pipeline(str(_photoz_pipeline(tmp_path, no_u)))]
    assert len(problems) == 1 and "['mag_u_lsst']" in problems[0] and "PZCalibrate" in problems[0], problems


def test_check_follows_columns_through_shift_weights_and_both_splits(tmp_path, train100):
    """pipelines/photoz.yml: the labelled catalog reaches PZInform, PZCalibrate and the gates
    through ShiftWeights and two CatalogSplits; the weight column that ShiftWeights adds is not
    asked of it, the redshift is."""
    with_z = write_catalog(tmp_path / "with_z.hdf5", train100)
    assert check_pipeline(str(_photoz_pipeline(tmp_path, with_z, name="photoz", input_name="labelled_catalog"))) == []
    no_z = write_catalog(tmp_path / "no_z.hdf5", {k: v for k, v in train100.items() if k != "redshift"})

    def edit(stages):
        stages["ShiftWeights"]["redshift_column"] = ""  # ShiftWeights itself no longer asks for it

    problems = [str(p) for p in check_pipeline(str(_photoz_pipeline(tmp_path, no_z, edit, name="photoz",
                                                                      input_name="labelled_catalog")))]
    assert len(problems) == 1 and no_z in problems[0] and "lacks column(s) ['redshift']" in problems[0], problems
    assert "through HoldoutSplit, LabelledSplit, ShiftWeights" in problems[0] or \
        "through LabelledSplit, ShiftWeights" in problems[0], problems
    assert not any("shift_weight" in p for p in problems), problems


def test_check_reports_an_empty_catalog(tmp_path, train100):
    empty = write_catalog(tmp_path / "empty.hdf5", {k: v[:0] for k, v in train100.items()})
    problems = [str(p) for p in check_pipeline(str(_photoz_pipeline(tmp_path, empty)))]
    assert len(problems) == 1 and empty in problems[0] and "0 rows" in problems[0], problems


def test_check_reports_a_misspelt_section_with_the_close_name(tmp_path):
    path = _photoz_pipeline(tmp_path, edit=lambda stages: stages.update(PZInfrom=stages.pop("PZInform")))
    text = "\n".join(str(p) for p in check_pipeline(str(path)))
    assert "config section PZInfrom: no stage of this name in the pipeline; did you mean 'PZInform'?" in text


def test_check_reports_values_of_the_wrong_type_as_a_run_would(tmp_path):
    def edit(stages):
        stages["PZInform"]["augment"] = "no"
        stages["PZEstimate"]["chunk_size"] = 500.7
        stages["PZCalibrate"]["bands"] = "ugrizy"

    path = _photoz_pipeline(tmp_path, edit=edit)
    problems = [str(p) for p in check_pipeline(str(path))]
    assert len(problems) == 3, problems
    text = "\n".join(problems)
    assert "'augment' = 'no'" in text and "'chunk_size' = 500.7" in text and "'bands' = 'ugrizy'" in text

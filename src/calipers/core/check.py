"""``calipers check PIPELINE.yml``: find every wiring and configuration problem before running.

ceci wires stages by tag name only and silently drops unknown config keys; this check reads the
pipeline and its stage configuration and reports, all at once:

- config keys no stage option knows (in a stage section or in ``global``), with the closest key;
- stage inputs that no stage produces and the pipeline does not give;
- inputs wired to an output of a different file type;
- given input files that do not exist (``pkg://`` names resolved);
- given catalogs without the columns a stage needs (``required_columns`` of calipers stages), and
  given qp files that are not qp ensembles.
"""
from __future__ import annotations

import difflib
import importlib
import os
from dataclasses import dataclass

import yaml

CECI_KEYS = {"name", "classname", "aliases", "config", "nprocess", "threads_per_process", "log_dir",
             "resume", "output_dir", "inputs", "python_paths", "modules", "launcher", "site", "pipeline_log"}


@dataclass
class Problem:
    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


def _load(path: str) -> dict:
    with open(path) as fh:
        return yaml.safe_load(fh) or {}


def _import_modules(pipe: dict) -> None:
    mods = pipe.get("modules", "calipers.stages")
    for m in (mods.split() if isinstance(mods, str) else mods):
        importlib.import_module(m)


def _stage_class(classname: str):
    from ceci import PipelineStage

    return PipelineStage.get_stage(classname)


def check_pipeline(path: str) -> list[Problem]:
    """Every problem found in the pipeline file ``path`` (empty list = fine)."""
    from calipers.core.paths import resolve_path

    problems: list[Problem] = []
    pipe = _load(path)
    _import_modules(pipe)
    config_path = pipe.get("config")
    config = _load(config_path) if config_path and os.path.exists(config_path) else {}
    if config_path and not os.path.exists(config_path):
        problems.append(Problem(path, f"stage config file {config_path} does not exist"))
    given = pipe.get("inputs") or {}
    stages = []
    for entry in pipe.get("stages", []):
        name = entry["name"]
        try:
            cls = _stage_class(entry.get("classname", name))
        except Exception as err:  # noqa: BLE001 - report, go on
            problems.append(Problem(f"stage {name}", f"unknown stage class {entry.get('classname', name)!r} ({err})"))
            continue
        stages.append((name, cls, entry.get("aliases") or {}))

    # outputs produced in the pipeline: tag -> (stage, file type)
    produced = {}
    for name, cls, aliases in stages:
        for tag, ftype in cls.outputs:
            produced[aliases.get(tag, tag)] = (name, ftype)

    # config keys
    everyone = set(CECI_KEYS)
    for _, cls, _ in stages:
        everyone |= set(cls.config_options) | {t for t, _ in cls.inputs} | {t for t, _ in cls.outputs}
    for key in (config.get("global") or {}):
        if key not in everyone:
            close = difflib.get_close_matches(key, sorted(everyone), n=1, cutoff=0.5)
            problems.append(Problem("config global", f"unknown key '{key}'" + (f"; did you mean '{close[0]}'?" if close else "")))
    stage_names = {n for n, _, _ in stages}
    for section in config:
        if section != "global" and section not in stage_names:
            problems.append(Problem(f"config section {section}", "no stage of this name in the pipeline"))
    for name, cls, aliases in stages:
        section = config.get(name) or {}
        tags = {t for t, _ in cls.inputs} | {t for t, _ in cls.outputs}
        known = set(cls.config_options) | tags | set(aliases.values()) | CECI_KEYS
        for key in section:
            if key not in known:
                close = difflib.get_close_matches(key, sorted(cls.config_options), n=1, cutoff=0.5)
                problems.append(Problem(f"stage {name}", f"unknown config key '{key}'" +
                                        (f"; did you mean '{close[0]}'?" if close else "")))

    # wiring and given files
    for name, cls, aliases in stages:
        needs = {}
        if hasattr(cls, "required_columns"):  # calipers stages
            merged = {k: _default(v) for k, v in cls.config_options.items()}
            merged |= {k: v for k, v in (config.get("global") or {}).items() if k in cls.config_options}
            merged |= {k: v for k, v in (config.get(name) or {}).items() if k in cls.config_options}
            needs = cls.required_columns(merged)
        for tag, ftype in cls.inputs:
            wired = aliases.get(tag, tag)
            if wired in produced:
                src, stype = produced[wired]
                if src != name and not _same_kind(stype, ftype):
                    problems.append(Problem(f"stage {name}", f"input '{tag}' (as '{wired}') expects {ftype.__name__} "
                                                             f"but stage {src} writes {stype.__name__}"))
                continue
            if wired not in given:
                problems.append(Problem(f"stage {name}", f"input '{tag}' (as '{wired}') is neither produced by a "
                                                         f"stage nor given under inputs:"))
                continue
            try:
                file = resolve_path(given[wired])
            except Exception as err:  # noqa: BLE001
                problems.append(Problem(f"input {wired}", str(err)))
                continue
            if not os.path.exists(file):
                problems.append(Problem(f"input {wired}", f"file {file} does not exist"))
                continue
            problems += _check_contents(name, tag, wired, file, ftype, needs.get(tag))
    return problems


# RAIL's data handles and calipers' file types that hold the same kind of file
_FAMILIES = {"QPHandle": "QPEnsembleFile", "TableHandle": "HDF5Catalog", "Hdf5Handle": "HDF5Catalog",
             "PqHandle": "HDF5Catalog", "ModelHandle": "ModelDir"}


def _same_kind(a, b) -> bool:
    if issubclass(a, b) or issubclass(b, a):
        return True
    fa, fb = _FAMILIES.get(a.__name__, a.__name__), _FAMILIES.get(b.__name__, b.__name__)
    return fa == fb


def _default(param):
    from ceci.config import StageParameter

    return param.default if isinstance(param, StageParameter) else param


def _check_contents(stage: str, tag: str, wired: str, file: str, ftype, needs) -> list[Problem]:
    import h5py

    from calipers.core.file_types import QPEnsembleFile

    out = []
    if ftype is QPEnsembleFile:
        try:
            with h5py.File(file, "r") as f:
                if "meta" not in f or "pdf_name" not in f["meta"]:
                    out.append(Problem(f"input {wired}", f"{file} is not a qp ensemble (no meta/pdf_name), "
                                                         f"needed by stage {stage} as '{tag}'"))
        except OSError as err:
            out.append(Problem(f"input {wired}", f"{file} is not an HDF5 file ({err})"))
    if needs:
        group, columns = needs
        try:
            with h5py.File(file, "r") as f:
                if group and group not in f:
                    out.append(Problem(f"input {wired}", f"{file} has no group '{group}' (stage {stage}, '{tag}')"))
                    return out
                have = set((f[group] if group else f).keys())
        except OSError as err:
            return out + [Problem(f"input {wired}", f"{file} is not an HDF5 file ({err})")]
        missing = [c for c in columns if c not in have]
        if missing:
            out.append(Problem(f"input {wired}", f"{file} group '{group}' lacks column(s) {missing} needed by stage "
                                                 f"{stage} as '{tag}'"))
    return out

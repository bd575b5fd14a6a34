"""``calipers check PIPELINE.yml``: find every wiring and configuration problem before running.

ceci wires stages by tag name only and silently drops unknown config keys; this check reads the
pipeline and its stage configuration and reports, all at once:

- config keys no stage option knows (in a stage section or in ``global``), with the closest key,
  and values of the wrong type (:func:`calipers.core.stage.check_option_value`, as a stage run);
  the keys accepted are exactly those a stage run accepts (:func:`calipers.core.stage.section_keys`,
  :func:`calipers.core.stage.global_keys`, :data:`calipers.core.stage.CECI_KEYS`);
- stage inputs that no stage produces and the pipeline does not give;
- inputs wired to an output of a different file type;
- given input files that do not exist (``pkg://`` names resolved);
- given catalogs without the columns a stage needs (``required_columns`` of calipers stages),
  also when the catalog reaches the stage through stages that pass columns on unchanged
  (``CatalogSplit``, ``CatalogCut``: their ``column_passthrough``; columns a stage adds, such as
  ``ShiftWeights``' weight column, declared by its ``added_columns``), catalogs with no rows, and
  given qp files that are not qp ensembles.
"""
from __future__ import annotations

import difflib
import importlib
import os
from dataclasses import dataclass

import yaml

from ceci.config import StageParameter

from calipers.core.errors import ConfigError
from calipers.core.stage import CECI_KEYS, check_option_value, global_keys, section_keys  # noqa: F401 - CECI_KEYS re-exported


@dataclass
class Problem:
    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


@dataclass
class _Need:
    """Columns a stage needs in a given catalog (possibly through pass-through stages)."""

    group: str
    columns: list
    who: str  # "stage X as 'tag'" (+ " through Y")


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


def _merged_config(cls, config: dict, name: str) -> dict:
    merged = {k: _default(v) for k, v in cls.config_options.items()}
    merged |= {k: v for k, v in (config.get("global") or {}).items() if k in cls.config_options}
    merged |= {k: v for k, v in (config.get(name) or {}).items() if k in cls.config_options}
    return merged


def check_pipeline(path: str) -> list[Problem]:
    """Every problem found in the pipeline file ``path`` (empty list = fine)."""
    from calipers.core.paths import resolve_path
    from calipers.core.stage import CalipersStage

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

    # outputs produced in the pipeline: tag -> (stage, file type); pass-through outputs -> their input
    produced, passthrough = {}, {}
    for name, cls, aliases in stages:
        through = getattr(cls, "column_passthrough", {})
        group = _merged_config(cls, config, name).get("hdf5_groupname", "")
        for tag, ftype in cls.outputs:
            produced[aliases.get(tag, tag)] = (name, ftype)
            if tag in through:
                added = cls.added_columns(_merged_config(cls, config, name)).get(tag, []) \
                    if hasattr(cls, "added_columns") else []
                passthrough[aliases.get(tag, tag)] = (name, aliases.get(through[tag], through[tag]), group, set(added))

    # config keys: the same sets a stage run accepts
    registered = [_stage_class(n) for n in CalipersStage.registered()]
    everyone = global_keys(registered + [cls for _, cls, _ in stages])
    for key in (config.get("global") or {}):
        if key not in everyone:
            close = difflib.get_close_matches(key, sorted(everyone), n=1, cutoff=0.5)
            problems.append(Problem("config global", f"unknown key '{key}'" + (f"; did you mean '{close[0]}'?" if close else "")))
    stage_names = {n for n, _, _ in stages}
    for section in config:
        if section != "global" and section not in stage_names:
            close = difflib.get_close_matches(section, sorted(stage_names), n=1, cutoff=0.8)
            problems.append(Problem(f"config section {section}", "no stage of this name in the pipeline" +
                                    (f"; did you mean '{close[0]}'?" if close else "")))
    for name, cls, aliases in stages:
        section = config.get(name) or {}
        known = section_keys(cls, aliases)
        for key in section:
            if key not in known:
                close = difflib.get_close_matches(key, sorted(cls.config_options), n=1, cutoff=0.5)
                problems.append(Problem(f"stage {name}", f"unknown config key '{key}'" +
                                        (f"; did you mean '{close[0]}'?" if close else "")))
        # value types, with the rule a stage run applies (check_option_value)
        for where, values in (("global section", config.get("global") or {}), (f"section '{name}'", section)):
            for key, value in values.items():
                param = cls.config_options.get(key)
                if isinstance(param, StageParameter):
                    try:
                        check_option_value(name, key, param.dtype, value, where)
                    except ConfigError as err:
                        problems.append(Problem(f"stage {name}", str(err)))

    # wiring; what each given file must hold
    files: dict[str, tuple] = {}      # wired name -> (file type, first stage reading it, tag)
    needs: dict[str, list[_Need]] = {}
    for name, cls, aliases in stages:
        required = cls.required_columns(_merged_config(cls, config, name)) if hasattr(cls, "required_columns") else {}
        for tag, ftype in cls.inputs:
            wired = aliases.get(tag, tag)
            if wired in produced:
                src, stype = produced[wired]
                if src != name and not _same_kind(stype, ftype):
                    problems.append(Problem(f"stage {name}", f"input '{tag}' (as '{wired}') expects {ftype.__name__} "
                                                             f"but stage {src} writes {stype.__name__}"))
            elif wired not in given:
                problems.append(Problem(f"stage {name}", f"input '{tag}' (as '{wired}') is neither produced by a "
                                                         f"stage nor given under inputs:"))
                continue
            else:
                files.setdefault(wired, (ftype, name, tag))
            if tag not in required:
                continue
            group, columns = required[tag]
            who, via = f"stage {name} as '{tag}'", []
            while wired in passthrough:  # follow the columns back through CatalogSplit / CatalogCut
                src, upstream, src_group, added = passthrough[wired]
                columns = [c for c in columns if c not in added]  # written by that stage, not read from upstream
                if src_group != group:
                    problems.append(Problem(f"stage {name}", f"input '{tag}' is read from group '{group}' but stage "
                                                             f"{src} writes its catalog in group '{src_group}'"))
                    break
                via.append(src)
                wired = upstream
            else:
                if wired in given:
                    where = f"{who} (through {', '.join(via)})" if via else who
                    needs.setdefault(wired, []).append(_Need(group, list(columns), where))

    for wired, (ftype, name, tag) in files.items():
        try:
            file = resolve_path(given[wired])
        except Exception as err:  # noqa: BLE001
            problems.append(Problem(f"input {wired}", str(err)))
            continue
        if not os.path.exists(file):
            problems.append(Problem(f"input {wired}", f"file {file} does not exist"))
            continue
        problems += _check_contents(name, tag, wired, file, ftype, needs.get(wired, []))
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


def _check_contents(stage: str, tag: str, wired: str, file: str, ftype, needs: list[_Need]) -> list[Problem]:
    import h5py

    from calipers.core.file_types import QPEnsembleFile

    out = []
    if ftype is QPEnsembleFile:
        try:
            with h5py.File(file, "r") as f:
                if "meta" not in f or "pdf_name" not in f["meta"]:
                    out.append(Problem(f"input {wired}", f"{file} is not a qp ensemble (no meta/pdf_name), "
                                                         f"needed by stage {stage} as '{tag}'"))
                elif "data" in f and len(f["data"]) and next(iter(f["data"].values())).shape[0] == 0:
                    out.append(Problem(f"input {wired}", f"{file} holds no p(z) (0 rows), needed by stage {stage} "
                                                         f"as '{tag}'"))
        except OSError as err:
            out.append(Problem(f"input {wired}", f"{file} is not an HDF5 file ({err})"))
    if not needs:
        return out
    try:
        with h5py.File(file, "r") as f:
            for need in needs:
                if need.group and need.group not in f:
                    out.append(Problem(f"input {wired}", f"{file} has no group '{need.group}' ({need.who})"))
                    continue
                g = f[need.group] if need.group else f
                have = {k for k, v in g.items() if isinstance(v, h5py.Dataset)}
                missing = [c for c in need.columns if c not in have]
                if missing:
                    out.append(Problem(f"input {wired}", f"{file} group '{need.group}' lacks column(s) {missing} "
                                                         f"needed by {need.who}"))
                lengths = {g[k].shape[0] for k in have if g[k].ndim >= 1}
                if have and lengths == {0}:
                    out.append(Problem(f"input {wired}", f"{file} group '{need.group}' has 0 rows ({need.who})"))
                elif not have:
                    out.append(Problem(f"input {wired}", f"{file} group '{need.group}' holds no columns "
                                                         f"({need.who})"))
    except OSError as err:
        return out + [Problem(f"input {wired}", f"{file} is not an HDF5 file ({err})")]
    # one message per file and problem, even when several stages need the same columns
    unique, seen = [], set()
    for p in out:
        key = (p.where, p.what.split(" needed by ")[0].split(" (stage ")[0])
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique

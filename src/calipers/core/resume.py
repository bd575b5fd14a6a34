"""Content-addressed resume.

Every calipers stage that finishes records, next to its outputs (``<output_dir>/.calipers/<stage>.json``),
what it was run from: calipers version, stage class, its raw config section and the ``global``
section, the SHA-256 of every input, and the SHA-256 of every output it wrote. ``calipers run
--resume`` then walks the pipeline in order and skips a stage only when all of that still
matches - same version and config, same input contents, outputs present and unmodified - and when
no stage upstream of it has to run. Everything else is rerun: its outputs are removed and ceci is
started with ``resume=True``, which skips exactly the stages whose outputs remain. Stages that are
not calipers stages (e.g. RAIL's) keep no record and always rerun.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

LEDGER_DIR = ".calipers"


def ledger_path(output_path: str, instance: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(output_path)), LEDGER_DIR, f"{instance}.json")


def write_record(path: str, record: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(record, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)


@dataclass
class StagePlan:
    name: str
    run: bool
    reason: str
    outputs: list[str]


def _output_name(ftype, tag: str) -> str:
    suffix = getattr(ftype, "suffix", "")
    return f"{tag}.{suffix}" if suffix else tag


def plan_resume(pipeline: str) -> list[StagePlan]:
    """For each stage, in pipeline order: rerun or skip, and why."""
    import calipers
    from calipers.core.check import _import_modules, _load, _stage_class
    from calipers.core.paths import resolve_path
    from calipers.core.provenance import file_hash

    pipe = _load(pipeline)
    _import_modules(pipe)
    config = _load(pipe["config"]) if pipe.get("config") and os.path.exists(pipe["config"]) else {}
    out_dir = pipe.get("output_dir", ".")
    given = {k: resolve_path(v) for k, v in (pipe.get("inputs") or {}).items()}
    produced_by: dict[str, str] = {}
    produced_path: dict[str, str] = {}
    dirty: set[str] = set()
    plans = []
    for entry in pipe.get("stages", []):
        name, aliases = entry["name"], entry.get("aliases") or {}
        cls = _stage_class(entry.get("classname", name))
        outputs = {tag: os.path.abspath(os.path.join(out_dir, _output_name(ft, aliases.get(tag, tag))))
                   for tag, ft in cls.outputs}
        inputs = {}
        upstream_dirty = []
        for tag, _ in cls.inputs:
            wired = aliases.get(tag, tag)
            if wired in produced_by:
                inputs[tag] = produced_path[wired]
                if produced_by[wired] in dirty:
                    upstream_dirty.append(produced_by[wired])
            else:
                inputs[tag] = given.get(wired, "")
        for tag, ft in cls.outputs:
            produced_by[aliases.get(tag, tag)] = name
            produced_path[aliases.get(tag, tag)] = outputs[tag]
        reason = ""
        record_file = os.path.join(out_dir, LEDGER_DIR, f"{name}.json")
        if upstream_dirty:
            reason = f"upstream stage {sorted(set(upstream_dirty))[0]} reruns"
        elif not os.path.exists(record_file):
            reason = "no record of a finished run"
        else:
            with open(record_file) as fh:
                rec = json.load(fh)
            if rec.get("calipers_version") != calipers.__version__:
                reason = f"calipers version {rec.get('calipers_version')} -> {calipers.__version__}"
            elif rec.get("class") != cls.name:
                reason = f"stage class {rec.get('class')} -> {cls.name}"
            elif rec.get("section") != (config.get(name) or {}):
                reason = "its config section changed"
            elif rec.get("global") != (config.get("global") or {}):
                reason = "the global config section changed"
            else:
                for tag, out in rec.get("outputs", {}).items():
                    if not os.path.exists(out["path"]):
                        reason = f"output {tag} is missing"
                        break
                    if file_hash(out["path"]) != out["hash"]:
                        reason = f"output {tag} was modified"
                        break
                else:
                    for tag, path in inputs.items():
                        recorded = rec.get("input_hashes", {}).get(tag)
                        if not os.path.exists(path) or recorded != file_hash(path):
                            reason = f"input {tag} changed"
                            break
        if reason:
            dirty.add(name)
        plans.append(StagePlan(name, bool(reason), reason or "unchanged", list(outputs.values())))
    return plans


def partial_files(output: str) -> list[str]:
    """Leftovers of an interrupted write of ``output``: ceci's ``inprogress_`` name, MPI part
    files (``.rankN``) and atomic-write temporaries (``.name.*.tmp``)."""
    import glob

    d, base = os.path.split(output)
    found = []
    for name in (base, f"inprogress_{base}"):
        found += glob.glob(os.path.join(glob.escape(d), glob.escape(name) + ".rank*"))
        found += glob.glob(os.path.join(glob.escape(d), "." + glob.escape(name) + ".*.tmp"))
    inprog = os.path.join(d, f"inprogress_{base}")
    if os.path.lexists(inprog):
        found.append(inprog)
    return sorted(found)


def prepare_resume(pipeline: str, log=print) -> list[StagePlan]:
    """Plan, then remove the outputs of every stage that must rerun (so ceci's resume reruns it),
    with any half-written leftovers of an interrupted run of it."""
    from calipers.core.atomic import remove_path

    plans = plan_resume(pipeline)
    for p in plans:
        log(f"{'RUN ' if p.run else 'SKIP'} {p.name}: {p.reason}")
        if p.run:
            for out in p.outputs:
                for path in [out, *partial_files(out)]:
                    if os.path.lexists(path) and path != out:
                        log(f"     removing partial file {path}")
                    remove_path(path)
    return plans

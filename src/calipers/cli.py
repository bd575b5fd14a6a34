"""The ``calipers`` command: small helpers around pipelines and their outputs.

``calipers describe PATH``  - say what a calipers output holds: a p(z) (qp) file, an HDF5
                             catalog, a tomography, simulations or posterior-samples file, a model,
                             calibrator or report directory, or a sacc FITS file.
``calipers stages``         - list the stages and their options.
``calipers check PIPE.yml`` - check a pipeline's wiring, config keys and input files (every problem at once).
``calipers run PIPE.yml``   - the check, then ``ceci PIPE.yml`` if it found nothing, holding a lock on
                             the output directory (a second run into the same directory is refused while
                             the first is alive); with ``--resume`` only stages whose config, inputs or
                             outputs changed (and their descendants) rerun.

The entry points (this command and ``python -m calipers``) also point numba's on-disk cache at a
per-user directory (:func:`configure_runtime`), so that running never writes into the installed
package (MPI ranks sharing a file system would race on it there).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def user_cache_dir() -> str:
    """``$XDG_CACHE_HOME/calipers`` (default ``~/.cache/calipers``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "calipers")


def configure_runtime() -> None:
    """Process-wide settings of the calipers entry points (never of the library): numba's cache
    goes to ``user_cache_dir()/numba`` unless ``NUMBA_CACHE_DIR`` is already set. Must run
    before numba is imported."""
    os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(user_cache_dir(), "numba"))


# ---------------------------------------------------------------------------- describe
def _print_provenance(prov: dict) -> None:
    if prov:
        print("  provenance: " + json.dumps({k: prov[k] for k in ("calipers_version", "stage", "run_key", "created")
                                              if k in prov}))


def _read_json(path: str) -> dict:
    from calipers.core.errors import FileFormatError
    from calipers.core.provenance import read_json_object

    return read_json_object(path, FileFormatError)


def _describe_directory(path: str) -> None:
    from calipers.core.provenance import read_provenance

    full = os.path.abspath(path)
    names = sorted(os.listdir(path))
    if "calibrator.json" in names:
        spec = _read_json(os.path.join(path, "calibrator.json"))
        print(f"calibrator: {full}")
        print(f"  method: {spec.get('method')}, fitted on {spec.get('n_calibration')} objects, "
              f"grid {spec.get('zgrid')}")
        fitted = spec.get("fitted_on") or {}
        if fitted:
            print(f"  fitted on p(z) of model: {fitted.get('path')} (sha256 {str(fitted.get('hash'))[:12]}...)")
        if spec.get("features"):
            f = spec["features"]
            print(f"  features: {f.get('feature_columns') or f.get('mag_columns')}")
    elif "report.json" in names:
        report = _read_json(os.path.join(path, "report.json"))
        checks = report.get("checks", [])
        print(f"report: {full}")
        print(f"  {report.get('title')}: {'PASSED' if report.get('passed') else 'FAILED'} "
              f"({sum(c.get('passed', False) for c in checks)} of {len(checks)} checks passed)")
        for c in checks:
            print(f"    {'ok  ' if c.get('passed') else 'FAIL'} {c.get('name')} = {c.get('value')}")
        print(f"  figures: {report.get('figures', [])}; page: {os.path.join(full, 'index.html')}")
    elif "metadata.json" in names:
        meta = _read_json(os.path.join(path, "metadata.json"))
        kind = meta.get("format") or meta.get("kind") or "model"
        print(f"model directory: {full}")
        print(f"  format: {kind}; files: {names}")
        for key in ("method", "bands", "n_simulations", "z_range"):
            if key in meta:
                print(f"  {key}: {meta[key]}")
        prep = meta.get("preprocessor")
        if isinstance(prep, dict) and "bands" in prep:
            print(f"  bands: {prep['bands']}")
    else:
        print(f"{full}: directory with {names}")
    _print_provenance(read_provenance(path))


def _describe_hdf5(path: str) -> None:
    import h5py

    from calipers.core.catalog import open_hdf5
    from calipers.core.provenance import read_provenance

    full = os.path.abspath(path)
    with open_hdf5(path) as f:
        keys = set(f.keys())
        if "meta" in f and "pdf_name" in f["meta"]:
            from calipers.core.qpio import qp_size

            name = f["meta"]["pdf_name"][0]
            name = name.decode() if isinstance(name, bytes) else str(name)
            ancil = sorted(f["ancil"]) if "ancil" in f else []
            nz_file = "realization" in ancil
            print(f"{'n(z) file' if nz_file else 'p(z) file'}: {full}")
            print(f"  qp ensemble: {name}, {qp_size(path)} distributions")
            if ancil:
                print(f"  ancil columns: {ancil}")
        elif "simulations" in keys:
            g = f["simulations"]
            spec = json.loads(g.attrs.get("spec", "{}"))
            print(f"simulations: {full}")
            print(f"  {g['theta'].shape[0]} simulations of {spec.get('simulator')}: theta {g['theta'].shape[1:]} "
                  f"{spec.get('param_names', '')}, x {g['x'].shape[1:]}")
        elif "tomography" in keys:
            g = f["tomography"]
            print(f"tomography: {full}")
            print(f"  {g['bin'].shape[0]} galaxies, edges {g.attrs.get('edges')}, counts {g.attrs.get('counts')}, "
                  f"assigned by {g.attrs.get('assign_by')}")
        elif "samples" in keys and "param_names" in keys:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in f["param_names"][:]]
            print(f"posterior samples: {full}")
            print(f"  {f['samples'].shape[0]} samples of {names}")
        else:
            groups = [("", f)] + [(k, v) for k, v in f.items() if isinstance(v, h5py.Group) and k != "provenance"]
            described = False
            for gname, g in groups:
                cols = {k: v for k, v in g.items() if isinstance(v, h5py.Dataset)}
                if not cols:
                    continue
                lengths = sorted({v.shape[0] if v.ndim else 0 for v in cols.values()})
                if not described:
                    print(f"HDF5 catalog: {full}")
                    described = True
                shown = sorted(cols)
                more = f" (+{len(shown) - 20} more)" if len(shown) > 20 else ""
                print(f"  group '{gname}': {lengths[0] if len(lengths) == 1 else lengths} rows, "
                      f"{len(cols)} columns {shown[:20]}{more}")
            if not described:
                print(f"{full}: HDF5 file with groups {sorted(keys)}")
    _print_provenance(read_provenance(path))


def _describe_sacc(path: str) -> None:
    import sacc

    from calipers.core.errors import FileFormatError

    try:
        s = sacc.Sacc.load_fits(path)
    except Exception as err:  # noqa: BLE001 - astropy/sacc raise many kinds: name the file
        raise FileFormatError(f"{path}: cannot be read as a sacc file ({type(err).__name__}: {err})") from err
    print(f"sacc file: {os.path.abspath(path)}")
    print(f"  {len(s.mean)} data points, data types {s.get_data_types()}, tracers {sorted(s.tracers)}, "
          f"covariance: {'yes' if s.has_covariance() else 'no'}")
    meta = {k: v for k, v in s.metadata.items() if not hasattr(v, "shape")}
    if meta:
        print(f"  metadata: {json.dumps(meta, default=str)}")


def describe(path: str) -> int:
    """Print what the calipers output at ``path`` holds; 1 (and a message) when it cannot be read."""
    from calipers.core.errors import CalipersError

    if not os.path.exists(path):
        print(f"{path}: no such file", file=sys.stderr)
        return 1
    try:
        if os.path.isdir(path):
            _describe_directory(path)
            return 0
        with open(path, "rb") as fh:
            head = fh.read(8)
        if head.startswith(b"SIMPLE"):
            _describe_sacc(path)
        elif head == b"\x89HDF\r\n\x1a\n":
            _describe_hdf5(path)
        else:
            print(f"{path}: neither HDF5 nor FITS; not a file calipers writes", file=sys.stderr)
            return 1
    except (CalipersError, OSError, KeyError, ValueError) as err:
        print(f"{path}: cannot be described: {err}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------- run
def _output_dir(pipeline: str, ceci_args: list[str]) -> str:
    import yaml

    with open(pipeline) as fh:
        pipe = yaml.safe_load(fh) or {}
    out = pipe.get("output_dir", ".")
    for arg in ceci_args:  # ceci takes key=value overrides
        if arg.startswith("output_dir="):
            out = arg.split("=", 1)[1]
    return out


def run(pipeline: str, ceci_args: list[str], resume: bool) -> int:
    """``calipers run``: check, lock the output directory, (resume,) run ceci."""
    import subprocess

    from calipers.core.check import check_pipeline
    from calipers.core.errors import OutputLocked
    from calipers.core.lock import RUN_LOCK_ENV, Lock, run_lock_path

    problems = check_pipeline(pipeline)
    if problems:
        for p in problems:
            print(f"PROBLEM {p}", file=sys.stderr)
        print(f"{pipeline}: {len(problems)} problem(s); not running", file=sys.stderr)
        return 1
    out_dir = _output_dir(pipeline, ceci_args)
    lock = Lock(run_lock_path(out_dir), f"output directory {os.path.abspath(out_dir)}")
    try:
        lock.acquire()
    except OutputLocked as err:
        print(f"{pipeline}: not running: {err}", file=sys.stderr)
        return 1
    try:
        extra = list(ceci_args)
        if resume:
            from calipers.core.resume import prepare_resume

            plans = prepare_resume(pipeline)
            if not any(p.run for p in plans):
                print(f"{pipeline}: every stage is up to date")
                return 0
            extra.append("resume=True")
        env = dict(os.environ, **{RUN_LOCK_ENV: lock.path})  # the stages of this run may write here
        return subprocess.call(["ceci", pipeline, *extra], env=env)
    finally:
        lock.release()


def main(argv: list[str] | None = None) -> int:
    configure_runtime()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="calipers", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("describe", help="describe an output file or directory")
    d.add_argument("path")
    sub.add_parser("stages", help="list stages and their options")
    c = sub.add_parser("check", help="check a pipeline's wiring, config keys and input files; list every problem")
    c.add_argument("pipeline")
    r = sub.add_parser("run", help="check a pipeline, then run it with ceci (stops before running on any problem)")
    r.add_argument("pipeline")
    r.add_argument("--resume", action="store_true",
                   help="rerun only stages whose config, inputs or outputs changed since their recorded run, and "
                        "everything downstream of them")
    r.add_argument("ceci_args", nargs=argparse.REMAINDER, help="passed on to ceci")
    args = parser.parse_args(argv)
    if args.cmd == "run":
        return run(args.pipeline, list(args.ceci_args), args.resume)
    if args.cmd == "check":
        from calipers.core.check import check_pipeline

        problems = check_pipeline(args.pipeline)
        for p in problems:
            print(f"PROBLEM {p}")
        print(f"{args.pipeline}: {len(problems)} problem(s)" if problems else f"{args.pipeline}: OK")
        return 1 if problems else 0
    if args.cmd == "describe":
        return describe(args.path)
    if args.cmd == "stages":
        import calipers.stages  # noqa: F401
        from ceci import PipelineStage

        from calipers.core.stage import CalipersStage

        for name in sorted(CalipersStage.registered()):
            cls = PipelineStage.pipeline_stages[name][0]
            print(f"{name}: {(cls.__doc__ or '').strip().splitlines()[0]}")
            print("  inputs: " + ", ".join(f"{t} ({c.__name__})" for t, c in cls.inputs))
            print("  outputs: " + ", ".join(f"{t} ({c.__name__})" for t, c in cls.outputs))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""The ``calipers`` command: small helpers around pipelines and their outputs.

``calipers describe FILE``  - say what a calipers/qp output holds, and where it is.
``calipers stages``         - list the stages and their options.
``calipers check PIPE.yml`` - check a pipeline's wiring, config keys and input files (every problem at once).
``calipers run PIPE.yml``   - the check, then ``ceci PIPE.yml`` if it found nothing; with ``--resume``
                             only stages whose config, inputs or outputs changed (and their descendants) rerun.
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def describe(path: str) -> int:
    from calipers.core.provenance import read_provenance

    if not os.path.exists(path):
        print(f"{path}: no such file", file=sys.stderr)
        return 1
    full = os.path.abspath(path)
    if os.path.isdir(path):
        print(f"{full}: directory with {sorted(os.listdir(path))}")
    else:
        import h5py

        with h5py.File(path, "r") as f:
            is_qp = "meta" in f and "pdf_name" in f["meta"]
        if is_qp:
            import qp

            ens = qp.read(path)
            print(f"p(z) file: {full}")
            print(f"  qp ensemble: {ens.gen_class.name}, {ens.npdf} distributions")
            if ens.ancil:
                print(f"  ancil columns: {sorted(ens.ancil)}")
        else:
            print(f"{full}: HDF5 file")
    prov = read_provenance(path)
    if prov:
        print("  provenance: " + json.dumps({k: prov[k] for k in ("calipers_version", "stage", "run_key") if k in prov}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="calipers", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("describe", help="describe an output file")
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
        import subprocess

        from calipers.core.check import check_pipeline

        problems = check_pipeline(args.pipeline)
        if problems:
            for p in problems:
                print(f"PROBLEM {p}", file=sys.stderr)
            print(f"{args.pipeline}: {len(problems)} problem(s); not running", file=sys.stderr)
            return 1
        extra = list(args.ceci_args)
        if args.resume:
            from calipers.core.resume import prepare_resume

            plans = prepare_resume(args.pipeline)
            if not any(p.run for p in plans):
                print(f"{args.pipeline}: every stage is up to date")
                return 0
            extra.append("resume=True")
        return subprocess.call(["ceci", args.pipeline, *extra])
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

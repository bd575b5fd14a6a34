"""Run any calipers stage alone: ``python -m calipers StageName --tag=path ... --config=cfg.yml``.

This is also the command ceci generates for each stage of a pipeline.
"""
import sys


def main() -> int:
    from calipers.cli import configure_runtime

    configure_runtime()  # before numba is imported: its cache goes to a user directory
    import ceci

    import calipers.stages  # noqa: F401  (registers every calipers stage with ceci)

    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        from calipers.core.stage import CalipersStage

        print(__doc__)
        print("Stages:", ", ".join(sorted(CalipersStage.registered())))
        return 0 if len(sys.argv) >= 2 else 1
    if "--mpi" not in sys.argv:
        return ceci.PipelineStage.main()
    try:
        return ceci.PipelineStage.main()
    except BaseException:
        # an exception on one rank would leave the others waiting in a collective call for ever:
        # report it, then abort the whole MPI job (the stage has already discarded its outputs)
        import traceback

        from mpi4py import MPI

        traceback.print_exc()
        sys.stderr.flush()
        MPI.COMM_WORLD.Abort(1)
        raise


if __name__ == "__main__":
    sys.exit(main())

"""Run any calipers stage alone: ``python -m calipers StageName --tag=path ... --config=cfg.yml``.

This is also the command ceci generates for each stage of a pipeline.
"""
import sys


def main() -> int:
    import ceci

    import calipers.stages  # noqa: F401  (registers every calipers stage with ceci)

    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        from calipers.core.stage import CalipersStage

        print(__doc__)
        print("Stages:", ", ".join(sorted(CalipersStage.registered())))
        return 0 if len(sys.argv) >= 2 else 1
    return ceci.PipelineStage.main()


if __name__ == "__main__":
    sys.exit(main())

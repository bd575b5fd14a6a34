"""The calipers stage contract, on top of ``ceci.PipelineStage``.

What every calipers stage gets from :class:`CalipersStage`:

- **strict configuration**: a key in the stage's section of the config file, or on the
  command line, that the stage does not declare is an error naming the key and the closest
  valid one (ceci itself silently keeps unknown keys);
- ``seed`` and, for training stages, ``device`` handling;
- **atomic outputs**: ceci writes to ``inprogress_<name>`` and renames at the end; if the stage
  fails, calipers deletes the in-progress outputs so no half file is left behind;
- **provenance**: calipers version, stage, config and input-file hashes (:meth:`provenance`);
- chunked catalog iteration split over MPI ranks (:meth:`iter_catalog`);
- ``pkg://package/path`` inputs resolved to files shipped inside installed packages.

Subclasses declare ``inputs``, ``outputs``, ``config_options`` (every option with ``msg=``)
and implement :meth:`process` (not ``run``).
"""
from __future__ import annotations

import contextlib
import copy
import difflib
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence

import numpy as np
from ceci import PipelineStage
from ceci.config import StageParameter

from calipers.core import catalog as _catalog
from calipers.core.atomic import remove_path
from calipers.core.errors import ConfigError
from calipers.core.paths import resolve_path
from calipers.core.provenance import make_provenance

log = logging.getLogger(__name__)

# keys ceci itself puts into a stage's arguments or config section
CECI_KEYS = frozenset({
    "config", "name", "mpi", "pdb", "cprofile", "memmon", "trace", "stage_name", "aliases", "comm",
    "classname", "module_name", "nprocess", "threads_per_process", "nodes", "mem_per_process",
    "site", "image", "volume", "python_paths", "output_dir", "log_dir", "resume",
})


def Param(dtype, default=None, msg: str = "", required: bool | None = None) -> StageParameter:
    """A declared config option; ``msg`` (one line of help) is mandatory."""
    if not msg:
        raise ValueError("every calipers config option needs a msg= help string")
    return StageParameter(dtype, default, msg=msg, required=required)


def _load_overall_config(config_file) -> dict:
    if isinstance(config_file, dict):
        return config_file
    if config_file in (None, "None", ""):
        return {}
    import yaml
    from ceci.pipeline.templates import read_and_apply_template

    overall = yaml.safe_load(read_and_apply_template(config_file)) or {}
    if not isinstance(overall, dict):
        raise ConfigError(f"{config_file}: a stage configuration file must be a mapping of stage name -> options")
    # an empty section (every key commented out) parses as None: treat it as {}
    return {k: ({} if v is None else v) for k, v in overall.items()}


class CalipersStage(PipelineStage):
    """Base of every calipers stage (not itself runnable)."""

    config_options = {
        "seed": Param(int, 0, msg="Random seed; the same inputs and seed give the same outputs"),
    }

    def __init_subclass__(cls, **kwargs):
        # ceci takes an inherited `name`; give every subclass its own by default
        if "name" not in cls.__dict__:
            cls.name = cls.__name__
        super().__init_subclass__(**kwargs)

    @classmethod
    def registered(cls) -> list[str]:
        """Names of the runnable calipers stages."""
        return [n for n, (c, _) in PipelineStage.pipeline_stages.items() if issubclass(c, CalipersStage)]

    @classmethod
    def required_columns(cls, config: dict) -> dict[str, tuple[str, list[str]]]:
        """Catalog columns each input needs, for ``calipers check``: {tag: (group, [columns])}."""
        return {}

    # ------------------------------------------------------------------ config
    def read_config(self, args):
        overall = _load_overall_config(self.get_input("config"))
        section = overall.get(self.instance_name, {})
        if not isinstance(section, dict):
            raise ConfigError(f"config section '{self.instance_name}' must be a mapping, got {type(section).__name__}")
        original = self._inputs["config"]
        self._inputs["config"] = copy.deepcopy(overall)  # ceci accepts the parsed dict (and mutates it)
        try:
            super().read_config(args)
        finally:
            self._inputs["config"] = original
        tags = set(self.input_tags()) | set(self.output_tags())
        known = set(self.config_options) | tags | {self.get_aliased_tag(t) for t in tags} | CECI_KEYS
        unknown: dict[str, str] = {}
        for k in section:
            if k not in known:
                unknown.setdefault(k, "config file")
        shared = set(overall.get("global") or {})  # checked below against every stage's options
        for k, v in args.items():
            if v is not None and k not in known and k not in shared:
                unknown.setdefault(k, "arguments")
        # 'global' options are shared: each must be known to some calipers stage
        everyone = set(CECI_KEYS)
        for name in self.registered():
            cls = PipelineStage.pipeline_stages[name][0]
            everyone |= set(cls.config_options) | set(cls.input_tags()) | set(cls.output_tags())
        for k in overall.get("global", {}) or {}:
            if k not in everyone:
                unknown.setdefault(k, "global section")
        if unknown:
            valid = sorted(set(self.config_options))
            lines = []
            for key, where in unknown.items():
                pool = sorted(everyone) if where == "global section" else valid
                close = difflib.get_close_matches(key, pool, n=1, cutoff=0.5)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                lines.append(f"unknown config key '{key}' (in {where}){hint}")
            raise ConfigError(
                f"stage {self.instance_name}: " + "; ".join(lines) + f". Valid keys: {', '.join(valid)}"
            )

    def config_dict(self) -> dict:
        """The stage's declared options and their values (inputs/outputs excluded)."""
        return {k: self.config[k] for k in self.config_options}

    # ------------------------------------------------------------------ helpers
    def input_path(self, tag: str) -> str:
        """Filesystem path of an input (``pkg://`` names resolved)."""
        return resolve_path(self.get_input(tag))

    def output_path(self, tag: str) -> str:
        """Temporary (in-progress) path to write an output to; renamed when the stage ends."""
        path = self.get_output(tag)
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        return path

    def provenance(self) -> dict[str, str]:
        """Provenance record of this stage run (input hashes computed once)."""
        if not hasattr(self, "_provenance"):
            prov = None
            if self.rank == 0:  # hash each input once, not once per rank
                inputs = {t: self.input_path(t) for t in self.input_tags()}
                prov = make_provenance(self.name, self.config_dict(), inputs)
            self._provenance = self.comm.bcast(prov, root=0) if self.comm is not None else prov
        return self._provenance

    def rng(self, *stream: int) -> np.random.Generator:
        """A numpy generator from the stage seed (plus optional sub-stream ids)."""
        return np.random.default_rng([self.config["seed"], *stream])

    def torch_device(self) -> str:
        from calipers.core.device import choose_device

        return choose_device(self.config["device"], self.rank)

    def iter_catalog(self, tag: str, group: str, columns: Sequence[str], chunk_size: int
                     ) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
        """This rank's chunks of an input catalog: (start, end, {column: array})."""
        return _catalog.iter_chunks(self.input_path(tag), group, columns, chunk_size, self.rank, self.size)

    def merge_on_root(self, part, merge):
        """Gather every rank's ``part`` on rank 0 and fold them in rank order with
        ``merge(a, b) -> a``; rank 0 gets the result, other ranks ``None``. Parts should be
        small summaries (histograms, accumulators), never catalogs."""
        if self.size == 1 or self.comm is None:
            return part
        parts = self.comm.gather(part, root=0)
        if self.rank != 0:
            return None
        out = parts[0]
        for p in parts[1:]:
            out = merge(out, p)
        return out

    @contextlib.contextmanager
    def qp_output(self, tag: str, n_rows: int, chunk_size: int, **layout):
        """A :class:`~calipers.core.qpio.QPChunkWriter` for output ``tag``, whose ``write(start,
        end, data, ancil)`` takes catalog rows of this rank's chunks (``catalog.chunk_ranges(n_rows,
        chunk_size, rank, size)``).

        Serially it writes the (in-progress) output directly. Under MPI each rank writes its
        chunks to a part file and rank 0 then copies the parts into the output chunk by chunk
        (no rank holds the catalog; no parallel HDF5 needed). ``layout``: ``meta``,
        ``data_shapes``, ``ancil_names``, ``ancil_dtypes``, ``background`` as for ``QPChunkWriter``.
        """
        from calipers.core.qpio import QPChunkWriter, merge_parts

        target = self.output_path(tag)
        prov = self.provenance()
        if self.size == 1:
            with QPChunkWriter(target, n_rows, provenance=prov, **layout) as out:
                yield out
            return
        ranges = _catalog.chunk_ranges(n_rows, chunk_size, self.rank, self.size)
        offsets, o = {}, 0
        for s, e in ranges:
            offsets[s] = o
            o += e - s
        with QPChunkWriter(f"{target}.rank{self.rank}", o, provenance=prov, **layout) as part:
            yield _PartWriter(part, offsets)
        self.comm.Barrier()
        if self.rank == 0:
            with QPChunkWriter(target, n_rows, provenance=prov, **layout):  # the empty target: no writes
                pass
            merge_parts(target, [(f"{target}.rank{r}", _catalog.chunk_ranges(n_rows, chunk_size, r, self.size))
                                 for r in range(self.size)])
        self.comm.Barrier()

    # ------------------------------------------------------------------ life cycle
    def process(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__}.process")

    def run(self):
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        try:
            self.process()
        except BaseException:
            self.discard_outputs()
            raise

    def discard_outputs(self) -> None:
        """Delete this stage's in-progress outputs (called when the stage fails)."""
        for tag in self.output_tags():
            for path in (self.get_output(tag), f"{self.get_output(tag)}.rank{self.rank}"):
                try:
                    remove_path(path)
                except FileNotFoundError:  # another rank removed it first
                    pass

    def finalize(self):
        super().finalize()
        if self.rank == 0:
            for tag in self.output_tags():
                final = self.get_output(tag, final_name=True)
                if os.path.exists(final):
                    print(f"calipers {self.instance_name}: wrote {tag} -> {os.path.abspath(final)}", file=sys.stdout)
            self._record_run()

    def _record_run(self) -> None:
        """The content-addressed record that ``calipers run --resume`` compares against."""
        import calipers
        from calipers.core.provenance import file_hash
        from calipers.core.resume import ledger_path, write_record

        finals = {t: os.path.abspath(self.get_output(t, final_name=True)) for t in self.output_tags()}
        if not finals or not all(os.path.exists(p) for p in finals.values()):
            return
        try:
            overall = _load_overall_config(self.get_input("config"))
        except Exception:  # noqa: BLE001 - a stage run without a config file keeps no record
            return
        record = {"stage": self.instance_name, "class": self.name, "calipers_version": calipers.__version__,
                  "section": overall.get(self.instance_name) or {}, "global": overall.get("global") or {},
                  "input_hashes": json.loads(self.provenance().get("input_hashes", "{}")),
                  "outputs": {t: {"path": p, "hash": file_hash(p)} for t, p in finals.items()}}
        write_record(ledger_path(next(iter(finals.values())), self.instance_name), record)


class _PartWriter:
    """Maps catalog rows of this rank's chunks onto rows of its part file."""

    def __init__(self, part, offsets: dict[int, int]):
        self.part, self.offsets = part, offsets

    def write(self, start: int, end: int, data: dict, ancil: dict) -> None:
        if start not in self.offsets:
            raise ValueError(f"rows {start}:{end} are not a chunk of this rank")
        o = self.offsets[start]
        self.part.write(o, o + end - start, data, ancil)

"""The calipers stage contract, on top of ``ceci.PipelineStage``.

What every calipers stage gets from :class:`CalipersStage`:

- **strict configuration**: a key in the stage's section of the config file, or on the
  command line, that the stage does not declare is an error naming the key and the closest
  valid one (ceci itself silently keeps unknown keys); every value is type-checked before ceci
  casts it (:func:`check_option_value`: ``"no"`` is not a bool, 500.7 not an int, a string not a
  list), and a config file without the stage's section but with a section of a close name
  (a misspelling) is an error naming both. ``calipers check`` accepts exactly the keys a stage
  run accepts (:data:`CECI_KEYS`, :func:`section_keys`, :func:`global_keys`);
- ``seed`` and, for training stages, ``device`` handling;
- **atomic outputs**: ceci writes to ``inprogress_<name>`` and renames at the end; if the stage
  fails, calipers deletes the in-progress outputs so no half file is left behind; a declared
  output the stage did not write is an error (ceci only warns);
- **locks**: rank 0 locks each output (and refuses to start in a directory a live ``calipers
  run`` of another run holds) until the outputs have their final names (:mod:`calipers.core.lock`);
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
from calipers.core.errors import CalipersError, ConfigError
from calipers.core.paths import resolve_path
from calipers.core.provenance import make_provenance

log = logging.getLogger(__name__)

# ceci's own keys: what ceci puts into a stage's arguments (command line, make_stage) and what a
# pipeline file holds per stage or at its top level. Stage runs (CalipersStage.read_config) and
# ``calipers check`` accept exactly these besides each stage's options and tags.
CECI_KEYS = frozenset({
    # stage arguments
    "config", "name", "mpi", "pdb", "cprofile", "memmon", "trace", "stage_name", "aliases", "comm",
    # per-stage entries of a pipeline file
    "classname", "module_name", "nprocess", "threads_per_process", "nodes", "mem_per_process", "image", "volume",
    # top level of a pipeline file
    "site", "python_paths", "output_dir", "log_dir", "resume", "inputs", "modules", "launcher", "pipeline_log",
})


def section_keys(cls, aliases: dict | None = None) -> set[str]:
    """Every key allowed in the config section of a stage of class ``cls``: its options, its input
    and output tags (and their aliases) and :data:`CECI_KEYS`."""
    tags = {t for t, _ in cls.inputs} | {t for t, _ in cls.outputs}
    return set(cls.config_options) | tags | set((aliases or {}).values()) | CECI_KEYS


def global_keys(classes=None) -> set[str]:
    """Every key allowed in the ``global`` section: an option or tag of some stage (default: every
    registered calipers stage) or a ceci key."""
    if classes is None:
        classes = [PipelineStage.pipeline_stages[n][0] for n in CalipersStage.registered()]
    everyone = set(CECI_KEYS)
    for cls in classes:
        everyone |= set(cls.config_options) | {t for t, _ in cls.inputs} | {t for t, _ in cls.outputs}
    return everyone


def _type_name(dtype) -> str:
    return {bool: "a boolean (true or false, unquoted)", int: "a whole number", float: "a number",
            str: "a string", list: "a list (e.g. [a, b])", dict: "a mapping"}.get(dtype, dtype.__name__)


def check_option_value(stage: str, key: str, dtype, value, where: str):
    """Check one raw config value against its declared type before ceci casts it; return the
    value to use.

    ceci casts with the type's constructor, which turns ``"no"`` into True, 500.7 into 500 and a
    string ``bands: ugr`` into ``['u', 'g', 'r']``. Here: a bool must be a real boolean; an int a
    whole number (an integral float such as 1.0e5 is accepted), never a string; a float any real
    number, or a string that reads as one (YAML 1.1 reads ``1e-3`` without a dot as a string); a
    str a string; a list a list or tuple, never a string; a dict a mapping. None means "unset".

    Raises
    ------
    ConfigError
        Naming the stage, the key, the value, its type and where it was given.
    """
    import numbers

    if value is None or dtype is None:
        return value

    def bad(why: str = ""):
        raise ConfigError(f"stage {stage}: config '{key}' = {value!r} ({type(value).__name__}, in {where}) must be "
                          f"{_type_name(dtype)}{why}")

    is_bool = isinstance(value, (bool, np.bool_))
    if dtype is bool:
        if not is_bool:
            bad("; quoted words such as 'no' or 'false' are strings")
        return bool(value)
    if dtype is int:
        if is_bool or isinstance(value, str):
            bad()
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, numbers.Real) and float(value).is_integer():
            return int(value)
        bad(" (it would be truncated)" if isinstance(value, numbers.Real) else "")
    if dtype is float:
        if is_bool:
            bad()
        if isinstance(value, numbers.Real):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                bad()
        bad()
    if dtype is str:
        if not isinstance(value, str):
            bad(" (quote it if it is meant as text)")
        return value
    if dtype is list:
        if isinstance(value, (list, tuple)):
            return list(value)
        bad("; a single string is not a list" if isinstance(value, str) else "")
    if dtype is dict:
        if not isinstance(value, dict):
            bad()
        return value
    return value


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


DEVICE_OPTION = {"device": Param(str, "auto", msg="torch device: auto (a GPU when present), cpu, cuda or cuda:N")}


def rank_block_range(n: int, block: int, rank: int, size: int) -> tuple[int, int]:
    """The contiguous, block-aligned range [start, end) of ``n`` items that MPI ``rank`` of ``size``
    handles (whole blocks of ``block`` items each, so seeded blocks never straddle two ranks)."""
    n_blocks = -(-n // block)
    per = -(-n_blocks // size)
    start = min(rank * per * block, n)
    return start, min((rank + 1) * per * block, n)


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
        self._check_section_name(overall)
        self._check_types(overall, section, args)
        original = self._inputs["config"]
        self._inputs["config"] = copy.deepcopy(overall)  # ceci accepts the parsed dict (and mutates it)
        try:
            super().read_config(args)
        finally:
            self._inputs["config"] = original
        known = section_keys(type(self), self.get_aliases())
        unknown: dict[str, str] = {}
        for k in section:
            if k not in known:
                unknown.setdefault(k, "config file")
        shared = set(overall.get("global") or {})  # checked below against every stage's options
        for k, v in args.items():
            if v is not None and k not in known and k not in shared:
                unknown.setdefault(k, "arguments")
        # 'global' options are shared: each must be known to some calipers stage
        everyone = global_keys()
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

    def _check_section_name(self, overall: dict) -> None:
        """A config file with no section for this stage but one of a close name is a misspelling."""
        if not overall or self.instance_name in overall:
            return
        stage_names = set(PipelineStage.pipeline_stages)
        others = [k for k in overall if k != "global" and k not in stage_names]
        close = difflib.get_close_matches(self.instance_name, others, n=1, cutoff=0.8)
        if close:
            where = self.get_input("config")
            where = "the config" if isinstance(where, dict) else where
            raise ConfigError(f"{where}: no section '{self.instance_name}' for stage {self.instance_name}, but a "
                              f"section '{close[0]}': is it misspelt? (its options would be ignored)")

    def _check_types(self, overall: dict, section: dict, args: dict) -> None:
        """Type-check every raw value of a declared option (global section, stage section and
        arguments) before ceci casts it (:func:`check_option_value`)."""
        sources = [("global section", overall.get("global") or {}),
                   (f"section '{self.instance_name}'", section), ("arguments", args)]
        for where, values in sources:
            for key, value in values.items():
                param = self.config_options.get(key)
                if isinstance(param, StageParameter):
                    check_option_value(self.instance_name, key, param.dtype, value, where)

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
        self._take_locks()  # before the try: a refused run must not discard the holder's files
        try:
            # provenance is collective under MPI (rank 0 hashes, all receive): take it here, on
            # every rank, so a stage may later ask for it on rank 0 alone without a stray bcast
            self.provenance()
            self.process()
            self._check_outputs_written()
        except BaseException:
            self.discard_outputs()
            self._release_locks()
            raise

    def _take_locks(self) -> None:
        """Rank 0 locks every output (:func:`calipers.core.lock.output_locks`); every rank learns
        whether it could, so a refusal stops all ranks."""
        from calipers.core.lock import output_locks

        self._locks, refusal = [], None
        if self.rank == 0:
            try:
                self._locks = output_locks([self.get_output(t, final_name=True) for t in self.output_tags()])
            except CalipersError as err:
                refusal = err
        if self.size > 1 and self.comm is not None:
            refusal = self.comm.bcast(refusal, root=0)
        if refusal is not None:
            raise refusal

    def _release_locks(self) -> None:
        for lock in getattr(self, "_locks", []):
            lock.release()
        self._locks = []

    def _check_outputs_written(self) -> None:
        """Every declared output must exist when process() ends (ceci would only warn)."""
        missing = []
        if self.rank == 0:
            missing = [(t, self.get_output(t)) for t in self.output_tags() if not os.path.exists(self.get_output(t))]
        if self.size > 1 and self.comm is not None:
            missing = self.comm.bcast(missing, root=0)
        if missing:
            listed = ", ".join(f"'{t}' ({p})" for t, p in missing)
            raise CalipersError(f"stage {self.instance_name} finished without writing its declared output(s) {listed}")

    def discard_outputs(self) -> None:
        """Delete this stage's in-progress outputs (called when the stage fails)."""
        for tag in self.output_tags():
            for path in (self.get_output(tag), f"{self.get_output(tag)}.rank{self.rank}"):
                try:
                    remove_path(path)
                except FileNotFoundError:  # another rank removed it first
                    pass

    def finalize(self):
        try:
            super().finalize()
            if self.rank == 0:
                for tag in self.output_tags():
                    final = self.get_output(tag, final_name=True)
                    if os.path.exists(final):
                        print(f"calipers {self.instance_name}: wrote {tag} -> {os.path.abspath(final)}", file=sys.stdout)
                self._record_run()
        finally:
            self._release_locks()

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

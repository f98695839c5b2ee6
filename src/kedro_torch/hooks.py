"""Project hooks that concern no MLflow run (those are in :mod:`kedro_torch.tracking.hooks`).

Kedro imports them with the settings for every command, so they import Kedro only;
torch comes with the first hook call that needs it.
"""

from __future__ import annotations

import atexit
import gc
import logging
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from kedro.framework.hooks import hook_impl
from kedro.io import MemoryDataset, Version
from kedro.io.core import VERSION_FORMAT, AbstractDataset, AbstractVersionedDataset

from kedro_torch.pytorch import distributed, interrupts
from kedro_torch.pytorch.config import DataConfig, TrainingConfig, flatten, parse

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from kedro.io import DataCatalog
    from kedro.pipeline import Pipeline


class ParameterValidationHook:
    """Validates parameters, the input paths they name, and the data found there, before
    the pipeline starts (and before MLflow opens a run).

    ``tryfirst`` puts this ahead of kedro-mlflow's own ``before_pipeline_run``, so
    a typo, a missing folder or a table of bad rows never leaves an empty or failed
    MLflow run behind.
    """

    # Catalog entries read from a path given per run: the runtime parameter that sets
    # it, and what should be there.
    INPUT_PATHS: ClassVar[dict[str, tuple[str, str]]] = {
        "raw_images": ("raw_images_path", "image folder"),
        "raw_manifest": ("raw_manifest_path", "image table"),
        "pretrained_state_dict": ("model.pretrained_path", "state_dict file"),
        "inference_images": ("inference_images_path", "image folder"),
        "raw_table": ("raw_table_path", "table"),
        "inference_table": ("inference_table_path", "table"),
    }
    REPORT = "data_quality_report"

    @hook_impl(tryfirst=True)
    def before_pipeline_run(
        self, run_params: dict[str, Any], pipeline: Pipeline, catalog: DataCatalog
    ) -> None:
        """Imported here, not with the module: the checks import torch."""
        from kedro_torch.pytorch import api, checks, sources  # noqa: PLC0415

        inputs = pipeline.inputs()
        sections = {name.removeprefix("params:") for name in inputs} & set(checks.SECTIONS)
        parameters = catalog.load("parameters")
        configs = checks.validate_parameters(parameters, sections) if sections else {}
        read = self._read(configs, parameters)
        if "inference_table" in catalog and catalog["inference_table"]._describe().get("filepath"):
            read.add("inference_table")  # named for this run: a table model's rows
        for entry in sorted(inputs & read):
            if _reads_a_path(catalog[entry]) and not catalog.exists(entry):
                raise self._missing(entry, catalog)
        # Kedro loads every input of a node: an entry this run does not read loads as
        # None, so that its path need not exist (the image folder of a manifest run).
        for entry in sorted(inputs & self.INPUT_PATHS.keys() - read):
            _replace(catalog, entry, MemoryDataset(data=None))
        if "data" in configs:
            sources.get(configs["data"].source).open(configs["data"])
        if "training_checkpoints" in inputs and {"data", "model", "training"} <= configs.keys():
            api.refuse_unresumable(catalog.load("training_checkpoints"), configs["data"],
                                   configs["model"], configs["training"])
        if "data" in configs:
            self._judge_data(configs["data"], pipeline, catalog)

    @staticmethod
    def _read(configs: dict[str, Any], parameters: dict[str, Any]) -> set[str]:
        """The entries of INPUT_PATHS that this run's parameters have it read: the
        image table, the image folder or the table, as ``data.source`` says (none for a
        torchvision dataset, whose root ``data.torchvision`` names), what the inference
        pipeline predicts for such data (a folder of images, or a table), and the
        pretrained file if one is named."""
        from kedro_torch.pytorch import sources  # noqa: PLC0415

        model = configs.get("model")
        data = configs.get("data") or parse(DataConfig, parameters.get("data"), "data")
        source = sources.get(data.source)
        read = {entry for entry in (source.entry, source.inference_entry) if entry}
        if model is not None and model.pretrained_path:
            read.add("pretrained_state_dict")
        return read

    def _judge_data(self, config: Any, pipeline: Pipeline, catalog: DataCatalog) -> None:
        """The image folder or table this run reads, judged by its source before MLflow
        opens a run: everything found without decoding a file, all at once
        (:func:`~kedro_torch.pytorch.data.judge_folder` and ``judge_table``). What was
        loaded is handed on to the pipeline, which neither lists nor reads it again; a
        refusal's findings are saved as the run's data-quality report."""
        from kedro_torch.pytorch import data, sources  # noqa: PLC0415

        source = sources.get(config.source)
        if source.entry is None or source.entry not in pipeline.inputs():
            return
        described = catalog[source.entry]._describe()
        loaded = catalog.load(source.entry)
        _replace(catalog, source.entry, _Loaded(loaded, described))
        try:
            source.judge(loaded, config, _shown(str(described.get("filepath"))))
        except data.DataError as refusal:
            written = self._save_report(refusal.report, pipeline, catalog)
            if written is None:
                raise
            raise data.DataError(f"{refusal}\nThe data-quality report lists every problem: "
                                 f"{written}", refusal.report) from refusal

    def _save_report(self, report: dict | None, pipeline: Pipeline, catalog: DataCatalog
                     ) -> str | None:
        """Where the report of a refused run was saved (by rank 0 alone, as the pipeline
        would have saved it), or None."""
        if (report is None or self.REPORT not in pipeline.all_outputs()
                or not distributed.is_main_process()):
            return None
        dataset = catalog[self.REPORT]
        try:
            catalog.save(self.REPORT, report)
        except Exception as error:  # the refusal, not this, is what the user must read
            logger.warning("Could not save the data-quality report: %s", error)
            return None
        path = Path(str(dataset._describe().get("filepath")))
        if isinstance(dataset, AbstractVersionedDataset):
            path = path / dataset.resolve_save_version() / path.name
        return _shown(str(path))

    def _missing(self, entry: str, catalog: DataCatalog) -> Exception:
        """The path as the dataset resolved it, wherever it was set (``--params``, the
        catalog's default or conf/local), so the message shows what was looked for."""
        from kedro_torch.pytorch.config import ParameterError  # noqa: PLC0415

        key, what = self.INPUT_PATHS[entry]
        described = catalog[entry]._describe()
        path = described.get("path") or described.get("filepath")
        if not path:
            return ParameterError(f"{key}: no {what} given; pass one with --params {key}=...")
        return ParameterError(f"{key}: {what} {str(path)!r} does not exist")


class _Loaded(MemoryDataset):
    """What a catalog entry loaded, handed on to the nodes that read it, and described
    as that entry (the run's summary names the folder or table it came from)."""

    def __init__(self, data: Any, described: dict[str, Any]):
        super().__init__(data=data, copy_mode="assign")
        self._described = described

    def _describe(self) -> dict[str, Any]:
        return self._described


def _reads_a_path(dataset: AbstractDataset) -> bool:
    """Whether the entry reads a file or folder that can be looked for before the run:
    the project's own datasets (whose path may be left unset) and any dataset with a
    path. A table read by SQL query, say, has none: its query tells when it runs."""
    described = dataset._describe()
    path = described.get("path") or described.get("filepath")
    # kedro-datasets' SQL datasets describe a missing file path as the string "None".
    return type(dataset).__module__.startswith("kedro_torch.") or str(path) not in ("None", "")


def _shown(path: str) -> str:
    """A local path as a message shows it: relative to the working folder, where it is in it."""
    if "://" in path:
        return path
    absolute = Path(path).absolute()
    return str(absolute.relative_to(Path.cwd())) if absolute.is_relative_to(Path.cwd()) else path


def _replace(catalog: DataCatalog, name: str, dataset: AbstractDataset) -> None:
    """``dataset`` in place of the catalog's entry for this run, without the warning the
    catalog logs for each replaced entry."""
    disabled = logging.root.manager.disable
    logging.disable(max(disabled, logging.WARNING))
    try:
        catalog[name] = dataset
    finally:
        logging.disable(disabled)


class RunVersionsHook:
    """Each run reads back the versions it wrote itself.

    Kedro loads a versioned entry at its newest version, and a version is the time its
    run started. With two runs at once in one project, the run started second has the
    newer versions: when it saves a file first, the other run's next node loads that
    one instead of its own (evaluation would score the other run's model, and the
    MLflow run would record it). So every versioned output of the
    pipeline is loaded at the run's own save version; entries the pipeline only reads
    still load their newest version (``--from-nodes evaluate`` reads the last
    training's model). The intermediate files are versioned for the same reason.
    """

    @hook_impl
    def before_pipeline_run(self, pipeline: Pipeline, catalog: DataCatalog) -> None:
        if not distributed.is_main_process():  # the other ranks write nothing
            return
        for name in sorted(pipeline.all_outputs()):
            dataset = catalog.get(name)
            version = (dataset.resolve_save_version()
                       if isinstance(dataset, AbstractVersionedDataset) else None)
            if version is not None:  # None: a file dataset with versioning off
                _version_an_unversioned_file(dataset)
                _replace(catalog, name, catalog.get(name, version=Version(version, version)))


def _version_an_unversioned_file(dataset: AbstractVersionedDataset) -> None:
    """A local file left where a versioned entry keeps its versions (by a project from
    before the entry was versioned) becomes its earliest version, dated by the file's
    modification time: Kedro would refuse to save beside it, and it is kept."""
    path = Path(str(getattr(dataset, "_filepath", "")))  # where Kedro keeps the versions
    if getattr(dataset, "_protocol", None) != "file" or not path.is_file():
        return
    stamp = datetime.fromtimestamp(path.stat().st_mtime, tz=timezone.utc)
    version = stamp.strftime(VERSION_FORMAT)[:-4] + "Z"  # milliseconds, as Kedro writes
    aside = path.with_name(f".{path.name}.unversioned")
    try:
        path.rename(aside)
    except FileNotFoundError:  # another run, started at the same moment, moved it
        return
    (path / version).mkdir(parents=True)
    aside.rename(path / version / path.name)
    logger.info("Moved %s, written before it was versioned, to %s", path,
                path / version / path.name)


class DistributedHook:
    """Under torchrun every rank runs the session; this makes them one job.

    Before the pipeline, each rank of a training pipeline joins the process group, so
    that the transform stage can check the files once per machine and training can
    run in ``DistributedDataParallel``. On every rank but 0, each output of the
    pipeline is kept in memory: only rank 0 writes the catalog (kedro-mlflow opens no
    run there either: :class:`kedro_torch.tracking.hooks.MlflowHookForwarder`), and
    their INFO log, which would repeat rank 0's, is silenced.
    """

    def __init__(self) -> None:
        self._started = False

    @hook_impl
    def before_pipeline_run(self, pipeline: Pipeline, catalog: DataCatalog) -> None:
        """Imported here, not with the module: joining the group imports torch."""
        if not distributed.launched():
            return
        if "params:training" in pipeline.inputs():
            from kedro_torch.pytorch import engine  # noqa: PLC0415

            training = parse(TrainingConfig, catalog.load("parameters").get("training"),
                             "training")
            self._started = distributed.start(
                training, distributed.plan(training, engine.resolve_device(training.device)))
        if not distributed.is_main_process():
            for name in pipeline.all_outputs():
                _replace(catalog, name, MemoryDataset(copy_mode="assign"))
            logging.disable(logging.INFO)

    @hook_impl
    def after_pipeline_run(self) -> None:
        self._stop()

    @hook_impl
    def on_pipeline_error(self) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._started:
            distributed.stop()
            self._started = False


START_UP_THRESHOLDS = (100_000, 20, 100)
_THRESHOLDS = gc.get_threshold()


def collect_rarely_during_start_up() -> None:
    """Kedro, MLflow and torch create about 750k objects while they are imported, all
    of which live until the process ends. With Python's default thresholds the
    collector walks the growing heap about seven times while they load: about a
    second of every kedro command (0.7 s of ``import mlflow`` alone). Collecting
    150 times less often until :class:`GarbageCollectionHook` freezes them saves
    most of it; the settings call this first thing."""
    gc.set_threshold(*START_UP_THRESHOLDS)


class GarbageCollectionHook:
    """Takes the objects of start-up out of the garbage collector's scans.

    Every full collection would walk them again, which costs over a second in a
    short run, and once more when the process exits. Once they are frozen, the
    collector goes back to its usual thresholds for what the run creates.
    """

    @hook_impl
    def before_pipeline_run(self) -> None:
        gc.freeze()
        gc.set_threshold(*_THRESHOLDS)
        atexit.register(gc.freeze)


class InterruptionHook:
    """Ends a kedro run that SIGTERM or SIGINT stops the way shells and schedulers
    expect: the command that resumes it in the log, and the status 128 + signal (143
    for SIGTERM, 130 for SIGINT) that tells them the job was stopped, not broken.

    While the pipeline runs, both signals raise an ``Interrupted`` exception, which
    the runner and the hooks see (SIGTERM would otherwise end the process on the
    spot, and Ctrl-C's KeyboardInterrupt passes by them); training turns them into a
    checkpoint at its next step. Registered last, so its ``trylast`` error hook runs
    after the one that records the MLflow run as KILLED. A training process killed
    from outside (``training.devices``) fails the run, and the log shows the same
    command, which continues from its last checkpoint.
    """

    def __init__(self) -> None:
        self._handlers: dict = {}

    @hook_impl
    def before_pipeline_run(self) -> None:
        """Before kedro-mlflow opens the run: a signal whose exit was dropped during
        start-up (raised in a finalizer, which Python reports and ignores) stops the
        command here, with no run opened."""
        self._handlers = interrupts.raise_on_signals()
        _stop_if_signalled()

    @hook_impl
    def after_node_run(self) -> None:
        """A signal whose exception was dropped (raised in a callback at a fork, as the
        file check starts its workers, or in a log handler, which reports its own
        errors and goes on) stops the run here, at the latest."""
        _stop_if_signalled()

    @hook_impl
    def after_pipeline_run(self) -> None:
        """The same after the last node, before kedro-mlflow closes the run: the run
        then ends as interrupted (tracking's exit handler records it KILLED)."""
        interrupts.restore_handlers(self._handlers)
        _stop_if_signalled()

    @hook_impl(trylast=True)
    def on_pipeline_error(self, error: Exception, run_params: dict[str, Any]) -> None:
        interrupts.restore_handlers(self._handlers)
        interrupted = interrupts.interruption(error)
        if interrupted is not None or isinstance(error, distributed.WorkerDied):
            # Printed, not logged: the log wraps long lines, and this one is for copying.
            print(f"Resume with:\n  {resume_command(run_params)}", file=sys.stderr)
        if interrupted is not None:
            logger.warning("%s", interrupted)
            raise SystemExit(interrupted.exit_code)


def _stop_if_signalled() -> None:
    if (signum := interrupts.received()) is not None:
        raise interrupts.Interrupted(signum)


def resume_command(run_params: dict[str, Any]) -> str:
    """The ``kedro run`` that continues an interrupted one: its pipelines, environment
    and ``--params``, and ``training.resume=auto``."""
    params = flatten(run_params.get("runtime_params") or {})
    params["training.resume"] = "auto"
    words = ["kedro", "run", "--pipelines", ",".join(run_params.get("pipeline_names") or
                                                     ["__default__"])]
    if run_params.get("env"):
        words += ["--env", run_params["env"]]
    words += ["--params", ",".join(f"{key}={value}" for key, value in params.items())]
    return shlex.join(words)

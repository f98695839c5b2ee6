"""Bad parameters, each given to a real `kedro run --pipelines training` as a user
would give it (``--params``), and refused at the door: with a message that names
the key (down to the argument of a class, where one can be told), before any node
runs and before MLflow opens a run; printed as one short block without a traceback,
with exit status 2, the traceback in the log file.

Every case runs through a KedroSession in this process (about 0.2 s each, where a
`kedro` process costs seconds), and is printed by the function the `kedro run`
command prints it with (:func:`kedro_torch.errors.report`); a handful of them go
through the `kedro` command itself, whose whole output is counted."""

import re
from pathlib import Path

import pytest
from kedro.framework.session import KedroSession
from mlflow import MlflowClient
from mlflow.entities import ViewType
from omegaconf import OmegaConf

from kedro_torch import errors
from kedro_torch.pytorch.config import ParameterError
from tests.e2e.conftest import bootstrapped, kedro

# The end-to-end tests' project copy, under a name of its own: a copy for this module,
# apart from tests/faults/conftest.py's, which the tests beside it point at MLflow servers.
from tests.e2e.conftest import project as bad_parameters_project  # noqa: F401
from tests.torchvision_roots import write_mnist

pytestmark = pytest.mark.e2e

# Lines a refused `kedro run` prints in all: Kedro's few start-up log lines, then the block.
MAX_LINES = 15
# Lines of the block itself: the message, what to do, the log file.
BLOCK_LINES = 3

# (--params items, the key the refusal must name). The items come after a valid
# base (the small digits folder, one batch of one epoch), and override it.
BAD_PARAMETERS = [
    # The monitored metric, and what needs it.
    (["training.monitor=val_f1"], "training.monitor"),
    (["training.keep_best=true", "data.split.train=0.85", "data.split.val=0"],
     "training.monitor"),
    # Settings the loop cannot run together.
    (["training.optimizer.name=LBFGS", "training.optimizer.kwargs.weight_decay=null",
      "training.accumulate_grad_batches=2"], "training.optimizer.name"),
    # Arguments a class only reads when it first steps or is first called.
    (["training.scheduler.kwargs.T_max=abc"], "training.scheduler.kwargs.T_max"),
    (["training.scheduler.kwargs.eta_min=abc"], "training.scheduler.kwargs.eta_min"),
    (["training.scheduler.name=StepLR", "training.scheduler.kwargs.step_size=0"],
     "training.scheduler.kwargs"),
    (["training.scheduler.name=ReduceLROnPlateau", "training.scheduler.kwargs.patience=abc"],
     "training.scheduler.kwargs.patience"),
    (["training.loss.kwargs.label_smoothing=abc"], "training.loss.kwargs.label_smoothing"),
    (["training.loss.kwargs.reduction=none"], "training.loss.kwargs.reduction"),
    # Arguments a class refuses as it is built.
    (["training.scheduler.name=StepLR"], "training.scheduler.kwargs.step_size"),  # missing
    (["training.optimizer.kwargs.lr=-1"], "training.optimizer.kwargs.lr"),
    (["training.optimizer.kwargs.betas=[0.9]"], "training.optimizer.kwargs.betas"),
    (["training.optimizer.kwargs.momentum=0.9"], "training.optimizer.kwargs.momentum"),
    (["training.optimizer.name=Rprop"], "training.optimizer.kwargs.weight_decay"),  # kept
    (["training.optimizer.name=Muon", "training.optimizer.fallback.kwargs.lr=abc"],
     "training.optimizer.fallback.kwargs.lr"),
    (["training.scheduler.name=SequentialLR",
      "training.scheduler.kwargs.schedulers=[{name: ConstantLR, kwargs: {factor: 2}}]"],
     "training.scheduler.kwargs.schedulers[0].kwargs.factor"),
    (["data.transforms.train=[{name: ColorJitter, kwargs: {brightness: -1}}]"],
     "data.transforms.train[0].kwargs.brightness"),
    # Unknown names.
    (["training.optimizer.name=Adamm"], "training.optimizer.name"),
    (["training.optimizer.name=Muon", "training.optimizer.fallback.name=Adamm"],
     "training.optimizer.fallback.name"),
    (["training.scheduler.name=Cosine"], "training.scheduler.name"),
    (["training.loss.name=CrossEntropy"], "training.loss.name"),
    (["training.loss.name=BCEWithLogitsLoss"], "training.loss.name"),  # no class targets
    (["model.name=resnet19"], "model.name"),
    (["data.transforms.train=[{name: RandomFlip}]"], "data.transforms.train[0].name"),
    # Unknown keys.
    (["training.learning_rate=0.1"], "training.learning_rate"),
    (["data.batchsize=32"], "data.batchsize"),
    (["model.pretrained=true"], "model.pretrained"),
    # Wrong types.
    (["training.epochs=ten"], "training.epochs"),
    (["data.image_size=big"], "data.image_size"),
    (["model.pretrained_strict=maybe"], "model.pretrained_strict"),
    (["training.optimizer.kwargs=0.1"], "training.optimizer.kwargs"),
    # Out of range, or not one of the choices.
    (["data.normalize.std=[0]"], "data.normalize.std"),
    (["training.epochs=0"], "training.epochs"),
    (["data.batch_size=0"], "data.batch_size"),
    (["data.channels=2"], "data.channels"),
    (["data.cache=ram"], "data.cache"),
    (["data.split.train=0.9"], "data.split"),
    (["training.precision=8"], "training.precision"),
    (["training.device=tpu"], "training.device"),
    (["training.ema_decay=1.5"], "training.ema_decay"),
    (["training.early_stopping.patience=0"], "training.early_stopping.patience"),
    (["training.scheduler.interval=hourly"], "training.scheduler.interval"),
    (["training.scheduler.warmup_epochs=-1"], "training.scheduler.warmup_epochs"),
    (["training.loss.class_weights=inverse"], "training.loss.class_weights"),
    (["model.unfreeze_at_epoch=2"], "model.unfreeze_at_epoch"),
    (["evaluation.top_k=0"], "evaluation.top_k"),
    (["mlflow.system_metrics_interval=-1"], "mlflow.system_metrics_interval"),
    (["mlflow.outage_wait=-5"], "mlflow.outage_wait"),
    (["model.kwargs.widht=3"], "model.kwargs.widht"),
    (["training.optimizer.name=SparseAdam", "training.optimizer.kwargs.weight_decay=null"],
     "training.optimizer.name"),  # SmallCNN has no sparse layer
    (["training.optimizer.name=Muon"], "training.optimizer.name"),  # SmallCNN: 2-D head only
    # Data parallelism: values out of range, and what this machine cannot run.
    (["training.strategy=fsdp"], "training.strategy"),
    (["training.devices=0"], "training.devices"),
    (["training.devices=many"], "training.devices"),
    (["training.strategy=single", "training.devices=2"], "training.strategy"),
    (["training.devices=2", "training.dist_backend=nccl"], "training.dist_backend"),
    (["training.devices=2", "training.sync_batchnorm=true"], "training.sync_batchnorm"),
    (["training.dist_timeout=0"], "training.dist_timeout"),
    # Input paths that do not exist, or are not given.
    (["raw_images_path=/nowhere"], "raw_images_path"),
    (["model.pretrained_path=/nowhere.pt"], "model.pretrained_path"),
    (["data.source=manifest"], "raw_manifest_path"),
    (["data.source=manifest", "raw_manifest_path=/nowhere.csv"], "raw_manifest_path"),
    # A torchvision dataset: its name, its root, its splits and its arguments.
    (["data.source=torchvision"], "data.torchvision.name"),
    (["data.source=torchvision", "data.torchvision.name=CIFAR11"], "data.torchvision.name"),
    (["data.source=torchvision", "data.torchvision.name=CocoDetection"],
     "data.torchvision.name"),
    (["data.source=torchvision", "data.torchvision.name=CIFAR10"], "data.torchvision.root"),
    (["data.source=torchvision", "data.torchvision.name=CIFAR10",
      "data.torchvision.root=/nowhere"], "data.torchvision.root"),
    (["data.source=torchvision", "data.torchvision.name=CIFAR10",
      "data.torchvision.root=/nowhere", "data.torchvision.test_split=val"],
     "data.torchvision.test_split"),
    (["data.source=torchvision", "data.torchvision.name=FakeData",
      "data.torchvision.kwargs.sizes=10"], "data.torchvision.kwargs.sizes"),
]


# A few of them through the `kedro` command: (the --params item, the key it names).
THROUGH_THE_COMMAND = [
    ("training.optimizer.name=Adamm", "training.optimizer.name"),
    ("training.scheduler.kwargs.T_max=abc", "training.scheduler.kwargs.T_max"),
    ("model.kwargs.widht=3", "model.kwargs.widht"),
    ("data.transforms.train=[{name: RandomFlip}]", "data.transforms.train[0].name"),
    ("raw_images_path=/nowhere", "raw_images_path"),
]


@pytest.fixture(scope="module")
def project(request) -> Path:
    return bootstrapped(request, "bad_parameters_project")


@pytest.fixture(scope="module")
def base(small_digits) -> list[str]:
    """Valid --params that would make any run that got through short."""
    return [f"raw_images_path={small_digits}", "training.epochs=1",
            "training.max_batches_per_epoch=1", "training.progress_bar=false"]


@pytest.fixture(scope="module")
def client(project) -> MlflowClient:
    return MlflowClient(f"sqlite:///{project / 'mlflow.db'}")


def traces(project: Path, client: MlflowClient) -> tuple[int, list[Path]]:
    """What a run that got past the door leaves: MLflow runs (deleted ones too) and
    files under data/."""
    experiments = [e.experiment_id for e in client.search_experiments(ViewType.ALL)]
    runs = client.search_runs(experiments, run_view_type=ViewType.ALL) if experiments else []
    return len(runs), sorted((project / "data").rglob("*"))


def test_a_bad_parameter_stops_the_kedro_cli_before_mlflow(project, client, base):
    output = refused_by_the_command(project, client, base, "training.monitor=val_f1",
                                    "training.monitor")
    assert "training.monitor must be one of train_loss" in output
    assert "'val_f1'" in output


@pytest.mark.parametrize(("item", "key"), THROUGH_THE_COMMAND,
                         ids=[item for item, _ in THROUGH_THE_COMMAND])
def test_the_kedro_command_prints_a_bad_parameter_as_one_short_block(project, client, base,
                                                                      item, key):
    refused_by_the_command(project, client, base, item, key)


def test_the_log_file_keeps_the_traceback_of_a_bad_parameter(project, client, base):
    output = refused_by_the_command(project, client, base, "training.epochs=abc",
                                    "training.epochs")
    assert output.splitlines()[-BLOCK_LINES:] == [
        "Bad parameter: training.epochs must be int, got str: 'abc'",
        "  Correct it in conf/ (parameters_*.yml) or with --params, and run again.",
        "  The full log, with the traceback, is in kedro-torch.log. KEDRO_TORCH_TRACEBACK=1 "
        "prints the traceback here.",
    ]
    log = (project / "kedro-torch.log").read_text()
    last = log[log.rindex("ERROR kedro_torch.errors: The run failed"):]
    assert "Traceback (most recent call last):" in last
    assert re.search(r'File ".*kedro_torch/pytorch/config\.py", line \d+, in _scalar', last)
    assert last.rstrip().endswith(
        "kedro_torch.pytorch.config.ParameterError: training.epochs must be int, got str: 'abc'")


@pytest.mark.parametrize(("items", "key"), BAD_PARAMETERS,
                         ids=[",".join(items) for items, _ in BAD_PARAMETERS])
def test_a_bad_parameter_is_refused_naming_its_key(project, client, base, items, key, capsys):
    refused(project, client, [*base, *items], key, capsys)


def test_a_torchvision_split_that_is_not_there_is_refused_naming_its_key(project, client, base,
                                                                         tmp_path, capsys):
    """An MNIST root holding the training files alone: its test split is missing."""
    write_mnist(tmp_path, train_per_class=2, test_per_class=0, with_test=False)
    refused(project, client, [*base, "data.source=torchvision", "data.torchvision.name=MNIST",
                              f"data.torchvision.root={tmp_path}"], "data.torchvision.test_split",
            capsys)


def refused(project: Path, client: MlflowClient, items: list[str], key: str,
            capsys: pytest.CaptureFixture) -> None:
    """A session run with these --params stops on a ParameterError naming ``key``,
    leaving nothing behind, which `kedro run` prints as one short block naming the
    key, and for which it exits with status 2."""
    before = traces(project, client)
    # Parsed as `kedro run --params` parses them.
    params = OmegaConf.to_container(OmegaConf.from_dotlist(items))
    with pytest.MonkeyPatch.context() as patch, pytest.raises(ParameterError) as refusal:
        patch.chdir(project)  # the catalog's relative paths resolve from here
        with KedroSession.create(project_path=project, runtime_params=params) as session:
            session.run(pipeline_names=["training"])
    assert key in str(refusal.value)
    assert traces(project, client) == before
    capsys.readouterr()
    assert errors.report(refusal.value) == errors.BAD_PARAMETERS == 2
    printed = capsys.readouterr()
    assert printed.out == ""
    short_block(printed.err, key, BLOCK_LINES)


def refused_by_the_command(project: Path, client: MlflowClient, base: list[str], item: str,
                           key: str) -> str:
    """`kedro run --pipelines training --params ...` with ``item`` after the valid base
    stops before MLflow opens a run, exits with status 2 and prints a few lines in
    all, naming ``key``, with no traceback; what it printed."""
    before = traces(project, client)
    result = kedro(project, "run", "--pipelines", "training",
                   "--params", ",".join([*base, item]))
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    short_block(output, key, MAX_LINES)
    assert "Running node" not in output
    assert traces(project, client) == before
    return output


def short_block(output: str, key: str, max_lines: int) -> None:
    """At most ``max_lines`` lines, naming ``key``, with no frame of a traceback (Python's
    or Rich's boxed one)."""
    assert len(output.splitlines()) <= max_lines, output
    assert key in output, output
    assert "Traceback" not in output, output
    assert "│" not in output, output

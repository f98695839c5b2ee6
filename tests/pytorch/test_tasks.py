"""The task seam: tasks and sources chosen by name, a model of the user's own trained on
a table by import path, and a training loop that knows no task, shown by training a
task the project does not have."""

from __future__ import annotations

import re
from typing import ClassVar

import pandas as pd
import pytest
import torch
from torch import nn

from kedro_torch.pytorch import api, sources, tasks
from kedro_torch.pytorch.config import (
    DataConfig,
    ModelConfig,
    OptimizerConfig,
    ParameterError,
    TableConfig,
    TrainingConfig,
    parse,
)
from kedro_torch.pytorch.sources.base import Source
from kedro_torch.pytorch.tasks.base import Task
from kedro_torch.pytorch.tensor_loader import TensorBatches
from tests.conftest import PROJECT_ROOT
from tests.own_models import TinyConvNet, WideAndDeep

PYTORCH = PROJECT_ROOT / "src" / "kedro_torch" / "pytorch"

# --- the registries --------------------------------------------------------------------


@pytest.mark.parametrize(("values", "key", "registry"), [
    ({"task": "segmentation"}, "data.task", tasks.REGISTRY),
    ({"source": "parquet"}, "data.source", sources.REGISTRY),
])
def test_an_unknown_name_names_the_key_and_lists_the_valid_names(values, key, registry):
    with pytest.raises(ParameterError) as refused:
        parse(DataConfig, values, "data")
    message = str(refused.value)
    assert message.startswith(f"{key}: unknown ")
    assert repr(next(iter(values.values()))) in message
    assert message.endswith(f"Valid: {', '.join(registry)}")


def test_a_task_refuses_a_source_that_does_not_give_its_samples():
    with pytest.raises(ParameterError, match=r"^data.task tabular_regression reads table, "
                                             r"not data.source 'folder'"):
        parse(DataConfig, {"task": "tabular_regression", "source": "folder"}, "data")


def test_every_registered_name_resolves_to_its_class_and_every_source_feeds_a_task():
    """A new task or source is one module and one registration line: the line must
    name a class that answers to that name and reads sources that exist."""
    read = set()
    for name in tasks.REGISTRY:
        task = tasks.get(name)
        assert issubclass(task, Task) and task.name == name
        assert set(task.sources) <= sources.REGISTRY.keys(), name
        read |= set(task.sources)
    assert read == sources.REGISTRY.keys()
    assert all(isinstance(sources.get(name), Source) for name in sources.REGISTRY)


# --- a model of the user's own ---------------------------------------------------------


def test_a_module_given_by_import_path_trains_on_a_table_and_is_rebuilt_from_its_spec(
        one_thread):
    """``model.name: tests.own_models:WideAndDeep`` with its own ``model.kwargs``: built
    with the table's shapes, trained through the plain API, and rebuilt from the saved
    spec (which names the import path) to evaluate the weights."""
    table = pd.read_csv(PROJECT_ROOT / "data" / "01_raw" / "penguins.csv")
    data = DataConfig(task="tabular_classification", source="table", batch_size=32,
                      table=TableConfig(target="species", drop=["year"]))
    own = ModelConfig("tests.own_models:WideAndDeep", {"hidden": 8})
    prepared = api.prepare_data(table, data)
    loaders = api.build_loaders(prepared.model_input, prepared.preprocessing, data, seed=0)
    model = api.build_model(own, data, prepared.label_map, prepared.preprocessing, seed=0)
    assert isinstance(model, WideAndDeep) and model.deep[0].out_features == 8
    assert model.wide.out_features == 3  # the species

    task = tasks.create(data.task, prepared.preprocessing)
    result = api.fit(model, loaders, TrainingConfig(
        epochs=15, seed=0, progress_bar=False, device="cpu",
        optimizer=OptimizerConfig("AdamW", {"lr": 0.02})),
        num_classes=len(prepared.label_map), task=task)
    spec = tasks.load_spec(task.spec(own, data, prepared.preprocessing).to_dict())
    evaluation = api.evaluate(result.state_dict, spec, prepared.model_input, prepared.label_map,
                              data_config=data, device="cpu")
    assert evaluation.metrics["test_accuracy"] >= 0.9


# --- a loop that knows no task ---------------------------------------------------------

# Words of the tasks the project ships: their metrics, targets and samples.
TASK_WORDS = re.compile(
    r"accuracy|argmax|\blabels?\b|_labels?\b|\blabel_|\bclasses\b|num_classes|class_names"
    r"|classification|classifier|regression|\bimages?\b|_images?\b|\bimage_", re.IGNORECASE)


def test_the_training_loop_and_its_callbacks_name_no_task():
    """What a task decides (its step, its metrics) reaches the loop through the Task
    it is given; the loop's own files name none of the tasks, not even as a default."""
    files = [PYTORCH / "engine.py", *sorted((PYTORCH / "callbacks").glob("*.py"))]
    assert len(files) > 2
    found = [f"{path.relative_to(PROJECT_ROOT)}:{number}: {line.strip()}"
             for path in files
             for number, line in enumerate(path.read_text().splitlines(), start=1)
             if TASK_WORDS.search(line)]
    assert not found, "\n".join(found)


class SignTask(Task):
    """A task the project does not have: the sign of a number, scored by its share of
    hits, a metric no shipped task reports."""

    name = "sign"
    default_loss = "SoftMarginLoss"  # targets of -1 and 1
    metrics: ClassVar[dict[str, str]] = {"hits": "max"}

    def step(self, model, inputs, targets, loss_fn):
        outputs = model(inputs).squeeze(1)
        return outputs, loss_fn(outputs, targets)

    def metric_sums(self, device):
        return super().metric_sums(device) | {"hits": torch.zeros((), device=device)}

    def accumulate(self, sums, outputs, targets, loss):
        super().accumulate(sums, outputs, targets, loss)
        sums["hits"] += (outputs.detach().sign() == targets).sum()

    def summarize(self, totals):
        return super().summarize(totals) | {"hits": totals["hits"] / totals["seen"]}


def signs(rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(rows, 3, generator=generator)
    return features, (features @ torch.tensor([1.0, -2.0, 0.5])).sign()


def test_the_loop_trains_a_task_defined_outside_the_project_and_reports_its_metric(
        one_thread):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    val_features, val_targets = signs(61, seed=2)
    loaders = {"train": TensorBatches(*signs(200, seed=1), 32, shuffle=True, seed=0),
               "val": TensorBatches(val_features, val_targets, 16, shuffle=False, seed=0)}
    result = api.fit(model, loaders, TrainingConfig(
        epochs=8, seed=0, progress_bar=False, device="cpu",
        optimizer=OptimizerConfig("AdamW", {"lr": 0.05})), num_classes=0, task=SignTask())
    assert [set(row) for row in result.history] == [
        {"epoch", "train_loss", "train_hits", "val_loss", "val_hits", "lr"}] * 8
    with torch.no_grad():
        hits = (result.model(val_features).squeeze(1).sign() == val_targets).double().mean()
    assert result.history[-1]["val_hits"] == pytest.approx(hits.item(), abs=1e-12)
    assert result.history[-1]["val_hits"] > 0.9


def test_an_image_model_given_by_import_path_gets_the_images_shapes_and_its_kwargs():
    data_config = DataConfig(channels=3)
    model = api.build_model(ModelConfig(name="tests.own_models:TinyConvNet",
                                        kwargs={"width": 6}),
                            data_config, {"cat": 0, "dog": 1, "owl": 2}, {}, seed=0)
    assert isinstance(model, TinyConvNet)
    assert (model.features[0].in_channels, model.fc.in_features, model.fc.out_features) == (
        3, 6, 3)
    with pytest.raises(ParameterError, match=r"^model\.kwargs\.depth: TinyConvNet takes no "
                                             r"argument 'depth'"):
        api.build_model(ModelConfig(name="tests.own_models:TinyConvNet", kwargs={"depth": 2}),
                        data_config, {"cat": 0}, {}, seed=0)

"""Thin Kedro nodes: export the trained model, then check the files written against
the eager model on the test split."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
import torch
from torch.export import ExportedProgram

from kedro_torch.pytorch import api, export, tasks
from kedro_torch.pytorch.config import DataConfig, ExportConfig, parse

logger = logging.getLogger(__name__)


def export_model(
    state_dict: dict[str, torch.Tensor], model_spec: dict[str, Any], label_map: dict[str, int]
) -> tuple[torch.jit.ScriptModule, ExportedProgram]:
    """TorchScript and torch.export versions of the trained model, on the CPU."""
    spec = tasks.load_spec(model_spec)
    task = tasks.create(spec.task)
    forms = task.exported(task.trained_model(spec, state_dict, label_map))
    return (export.to_torchscript(forms["torchscript"]),
            export.to_exported_program(forms["exported_program"], task.example_input(spec, 2)))


def verify_exports(
    torchscript_model: torch.jit.ScriptModule,
    exported_program: ExportedProgram,
    state_dict: dict[str, torch.Tensor],
    model_spec: dict[str, Any],
    label_map: dict[str, int],
    model_input: pd.DataFrame,
    data_params: dict[str, Any],
    export_params: dict[str, Any],
) -> dict:
    """Each reloaded export against the eager model it was made from, per batch size, on
    the test samples as training read them; one beyond the tolerance fails the run."""
    config = parse(ExportConfig, export_params, "export")
    spec = tasks.load_spec(model_spec)
    task = tasks.create(spec.task)
    report = export.compare_with_eager(
        task.exported(task.trained_model(spec, state_dict, label_map)),
        {"torchscript": torchscript_model, "exported_program": exported_program.module()},
        api.split_batch(model_input, spec, parse(DataConfig, data_params, "data")),
        config.batch_sizes, config.tolerance, task.output_difference,
    )
    logger.info("Exports vs eager on %d test samples: %s", report["samples"],
                report["max_abs_difference"])
    export.require_within_tolerance(report)
    return report

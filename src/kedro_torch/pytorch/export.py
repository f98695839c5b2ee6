"""A trained model in the forms people deploy: TorchScript and a torch.export program.

Both take a batch of the model's input (normalized images, a table's coded rows) of any
size along the batch dimension, batch size 1 included, and are checked against the
eager model before anyone relies on them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.export import Dim, ExportedProgram


def to_torchscript(model: nn.Module) -> torch.jit.ScriptModule:
    """Compile with ``torch.jit.script``, which keeps control flow and any batch size
    (tracing would record one example's path through the model)."""
    return torch.jit.script(model.eval())


def to_exported_program(model: nn.Module, example: torch.Tensor) -> ExportedProgram:
    """``torch.export`` with a dynamic batch dimension.

    torch.export specialises a dimension of size 0 or 1 unless told otherwise, so
    the batch is declared dynamic from 1 upwards: the program then serves one
    image as well as a thousand.
    """
    batch = Dim("batch", min=1)
    return torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},))


def tensor_difference(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    return (reference - candidate).abs().max().item()


@torch.no_grad()  # not inference_mode: TorchScript's detectors refuse inference tensors
def max_abs_difference(
    reference: Callable[[torch.Tensor], Any],
    candidate: Callable[[torch.Tensor], Any],
    samples: torch.Tensor,
    batch_size: int,
    difference: Callable[[Any, Any], float] = tensor_difference,
) -> float:
    """The largest absolute difference of the two models' outputs over ``samples``,
    fed in batches of ``batch_size`` (the last one may be smaller); ``difference``
    measures outputs that are not one tensor (a detector's boxes)."""
    largest = 0.0
    for start in range(0, len(samples), batch_size):
        batch = samples[start : start + batch_size]
        largest = max(largest, difference(reference(batch), candidate(batch)))
    return largest


def compare_with_eager(
    eager: nn.Module | Mapping[str, nn.Module],
    exported: Mapping[str, Callable[[torch.Tensor], Any]],
    samples: torch.Tensor,
    batch_sizes: Sequence[int],
    tolerance: float,
    difference: Callable[[Any, Any], float] = tensor_difference,
) -> dict:
    """Max absolute output difference of each exported model against the eager one
    (or, by name, the eager module each was made from), per batch size, and whether all
    stay within ``tolerance``."""
    references = eager if isinstance(eager, Mapping) else dict.fromkeys(exported, eager)
    for module in references.values():
        module.eval()
    differences = {
        name: {
            f"batch_size_{size}": max_abs_difference(references[name], model, samples, size,
                                                     difference)
            for size in batch_sizes
        }
        for name, model in exported.items()
    }
    return {
        "samples": len(samples),
        "tolerance": tolerance,
        "max_abs_difference": differences,
        "within_tolerance": all(
            value <= tolerance for per_size in differences.values() for value in per_size.values()
        ),
    }


def require_within_tolerance(report: dict, key: str = "export.tolerance") -> None:
    """Stop on an export that strays from the eager model: it would serve other answers."""
    if not report["within_tolerance"]:
        raise ValueError(
            f"an export differs from the eager model by more than {key} = "
            f"{report['tolerance']}: {report['max_abs_difference']}"
        )

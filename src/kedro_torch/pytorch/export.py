"""A trained model in the forms people deploy: TorchScript and a torch.export program.

Both take a batch of the model's input (normalized images, a table's coded rows) of any
size along the batch dimension, batch size 1 included, and are checked against the
eager model before anyone relies on them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

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


@torch.inference_mode()
def max_abs_difference(
    reference: Callable[[torch.Tensor], torch.Tensor],
    candidate: Callable[[torch.Tensor], torch.Tensor],
    samples: torch.Tensor,
    batch_size: int,
) -> float:
    """The largest absolute difference of the two models' outputs over ``samples``,
    fed in batches of ``batch_size`` (the last one may be smaller)."""
    largest = 0.0
    for start in range(0, len(samples), batch_size):
        batch = samples[start : start + batch_size]
        largest = max(largest, (reference(batch) - candidate(batch)).abs().max().item())
    return largest


def compare_with_eager(
    eager: nn.Module,
    exported: Mapping[str, Callable[[torch.Tensor], torch.Tensor]],
    samples: torch.Tensor,
    batch_sizes: Sequence[int],
    tolerance: float,
) -> dict:
    """Max absolute output difference of each exported model against the eager one,
    per batch size, and whether all stay within ``tolerance``."""
    eager.eval()
    differences = {
        name: {
            f"batch_size_{size}": max_abs_difference(eager, model, samples, size)
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

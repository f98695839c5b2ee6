"""The one place that asks about process ranks.

Code that writes (checkpoints, catalog outputs, MLflow) calls :func:`is_main_process`
so that a run launched with ``torchrun`` writes once, from rank 0.
"""

import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_main_process() -> bool:
    return not is_distributed() or dist.get_rank() == 0

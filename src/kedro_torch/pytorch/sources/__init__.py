"""The data sources, by the name ``data.source`` gives them.

A source is one module with a :class:`~kedro_torch.pytorch.sources.base.Source`
subclass: the catalog entry it reads, how that becomes the table of samples the task
prepares (a manifest of images, or the table itself), what reads its images, and what
is judged before a run starts. Adding one is a new module and one line in
:data:`REGISTRY`.
"""

from __future__ import annotations

import importlib

from kedro_torch.pytorch.config import ParameterError
from kedro_torch.pytorch.sources.base import Source

REGISTRY: dict[str, str] = {
    "folder": "kedro_torch.pytorch.sources.folder:FolderSource",
    "manifest": "kedro_torch.pytorch.sources.manifest:ManifestSource",
    "torchvision": "kedro_torch.pytorch.sources.torchvision:TorchvisionSource",
    "table": "kedro_torch.pytorch.sources.table:TableSource",
    "mask_folder": "kedro_torch.pytorch.sources.mask_folder:MaskFolderSource",
    "coco": "kedro_torch.pytorch.sources.coco:CocoSource",
    "voc": "kedro_torch.pytorch.sources.voc:VocSource",
}


def get(name: str, key: str = "data.source") -> Source:
    """The source registered as ``name``."""
    if name not in REGISTRY:
        raise ParameterError(f"{key}: unknown source {name!r}. Valid: {', '.join(REGISTRY)}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)()

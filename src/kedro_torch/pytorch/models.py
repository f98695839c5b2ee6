"""Model registry, building, and loading of pretrained weights.

One place knows the model names: the project's own models in :data:`PROJECT_MODELS`
and every name ``torchvision.models.list_models()`` returns. Weights are never
downloaded here; pretrained tensors come in as a ``state_dict``.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.error import URLError

import torch
import torchvision
from torch import nn

from kedro_torch.pytorch.config import ParameterError
from kedro_torch.pytorch.detection import SmallFCOS
from kedro_torch.pytorch.segmentation import UNet

logger = logging.getLogger(__name__)

# Wrappers add these to every key: DataParallel/DDP ("module.") and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Where torchvision models and SmallCNN keep their classifier head.
HEAD_MODULE_NAMES = ("fc", "classifier", "head", "heads")


class SmallCNN(nn.Module):
    """A compact CNN for small images (8 to 64 px): two conv blocks and a linear head.

    Global average pooling makes it independent of the input size.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, dropout: float = 0.1):
        super().__init__()

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                    nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *block(in_channels, width),
            *block(width, width),
            nn.MaxPool2d(2),
            *block(width, 2 * width),
            *block(2 * width, 2 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


PROJECT_MODELS: dict[str, type[nn.Module]] = {"small_cnn": SmallCNN}


def available_models() -> list[str]:
    return sorted(PROJECT_MODELS) + torchvision.models.list_models()


def check_model_name(name: str, key: str = "model.name") -> None:
    """Fail early, listing the valid names, when ``name`` is no known model and no
    import path of one."""
    if ":" in name:
        model_class(name, key)
    elif name not in PROJECT_MODELS and name not in torchvision.models.list_models():
        raise ValueError(
            f"{key}: unknown model {name!r}. Valid names: {', '.join(available_models())}, "
            "or the import path of an nn.Module class, as 'package.module:ClassName'"
        )


def build_model(name: str, num_classes: int, in_channels: int, **kwargs) -> nn.Module:
    """A fresh image classifier by name: :func:`build` with the shapes images give."""
    return build(name, {"num_classes": num_classes, "in_channels": in_channels}, kwargs)


def _torchvision_model(name: str, given: Mapping[str, Any],
                       kwargs: Mapping[str, Any]) -> nn.Module:
    """A torchvision model without weights (nothing is downloaded: nor a segmentation or
    detection model's backbone weights, unless ``weights_backbone`` is given); for
    grayscale input it gets a first convolution that takes one channel. What the task
    gives besides the classes and channels (a detector's input size and normalization)
    goes to the builder, under ``kwargs``."""
    builder = torchvision.models.get_model_builder(name)
    if "weights_backbone" in inspect.signature(builder).parameters:
        kwargs = {"weights_backbone": None, **kwargs}
    extra = {k: v for k, v in given.items() if k not in ("num_classes", "in_channels")}
    model = torchvision.models.get_model(name, weights=None, num_classes=given["num_classes"],
                                         **(extra | dict(kwargs)))
    if given["in_channels"] != 3:
        _adapt_first_conv(model, given["in_channels"])
    return model


def _adapt_first_conv(model: nn.Module, in_channels: int) -> None:
    """Replace the first Conv2d with one taking ``in_channels`` channels.

    The new weights are the old ones averaged over the input channels, so a
    pretrained RGB filter loaded later keeps its response to grey images.
    """
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                conv = nn.Conv2d(
                    in_channels, child.out_channels, child.kernel_size, child.stride,
                    child.padding, child.dilation, child.groups, child.bias is not None,
                    child.padding_mode,
                )
                with torch.no_grad():
                    conv.weight.copy_(
                        child.weight.mean(dim=1, keepdim=True).expand_as(conv.weight)
                    )
                    if child.bias is not None:
                        conv.bias.copy_(child.bias)
                setattr(parent, child_name, conv)
                return
    raise ValueError(f"{type(model).__name__} has no Conv2d to adapt to {in_channels} channels")


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # present in both, shapes differ
    missing: list[str] = field(default_factory=list)  # in the model, not in the file
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model


def strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Undo the key prefixes that DataParallel, DDP and torch.compile add."""
    cleaned = {}
    for key, tensor in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        cleaned[key] = tensor
    return cleaned


def head_parameter_names(model: nn.Module) -> set[str]:
    """Names of the classifier head's parameters.

    The head is the first of ``fc``, ``classifier``, ``head``, ``heads`` that the
    model has (torchvision's conventions), else the last module holding parameters.
    """
    for name in HEAD_MODULE_NAMES:
        module = getattr(model, name, None)
        if isinstance(module, nn.Module) and any(True for _ in module.parameters()):
            return {f"{name}.{n}" for n, _ in module.named_parameters()}
    last_name, last = "", model
    for name, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            last_name, last = name, module
    prefix = f"{last_name}." if last_name else ""
    return {prefix + n for n, _ in last.named_parameters(recurse=False)}


def torchvision_weights(name: str, weights: str, key: str = "model.weights") -> dict:
    """Download (or take from torch's hub cache) the state_dict of torchvision weights.

    Only for users who are online; loading is ``weights_only=True`` like every
    other load in the project.
    """
    if name not in torchvision.models.list_models():
        raise ValueError(f"{key}: torchvision has no weights for {name!r}, which is not a "
                         "torchvision model")
    enum = torchvision.models.get_model_weights(name)
    choices = ["DEFAULT", *(member.name for member in enum)]
    if weights not in choices:
        raise ValueError(f"{key}: {name} has no weights {weights!r}. Valid: {', '.join(choices)}")
    chosen = enum.DEFAULT if weights == "DEFAULT" else enum[weights]
    try:
        return torch.hub.load_state_dict_from_url(
            chosen.url, progress=False, check_hash=True, weights_only=True
        )
    except (URLError, OSError) as error:
        raise RuntimeError(
            f"{key}: could not download {chosen} from {chosen.url}: {error}. This needs network "
            "access. On an offline machine, download the file elsewhere and pass it with "
            "model.pretrained_path instead."
        ) from error


def load_pretrained(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = False
) -> LoadReport:
    """Load every tensor whose name and shape match; leave the rest as initialised.

    A classifier head sized for another number of classes is skipped rather than
    failing the whole load, which is what fine-tuning on new classes needs. With
    ``strict``, anything skipped, missing or unexpected is an error instead.
    """
    state_dict = strip_wrapper_prefixes(state_dict)
    own = model.state_dict()
    report = LoadReport()
    matching = {}
    for key, tensor in state_dict.items():
        if key not in own:
            report.unexpected.append(key)
        elif own[key].shape != tensor.shape:
            report.skipped.append(
                f"{key} (file {tuple(tensor.shape)}, model {tuple(own[key].shape)})"
            )
        else:
            matching[key] = tensor
            report.loaded.append(key)
    report.missing = [key for key in own if key not in state_dict]
    if not matching:
        raise ValueError(
            f"no tensor of the pretrained state_dict matches {type(model).__name__}: "
            f"{len(report.unexpected)} unknown keys, {len(report.skipped)} of another shape"
        )
    if strict and (report.skipped or report.missing or report.unexpected):
        raise ValueError(
            "model.pretrained_strict: the pretrained state_dict does not match "
            f"{type(model).__name__} exactly: skipped (shape differs) {report.skipped or '-'}; "
            f"missing {report.missing or '-'}; unexpected {report.unexpected or '-'}"
        )
    model.load_state_dict(matching, strict=False)
    logger.info(
        "Pretrained weights: %d tensors loaded, %d skipped (shape differs): %s; "
        "%d missing (left initialised): %s; %d unexpected: %s",
        len(report.loaded), len(report.skipped), report.skipped or "-",
        len(report.missing), report.missing or "-",
        len(report.unexpected), report.unexpected or "-",
    )
    return report


class TabularMLP(nn.Module):
    """An MLP for a table: an embedding per categorical column beside the numeric
    features, then Linear-ReLU-Dropout blocks and a linear head.

    Its input is what :meth:`~kedro_torch.pytorch.tables.TablePreprocessing.features`
    gives: the numeric (standardized) columns first, then one category code per
    categorical column, stored as floats so that a row is one tensor. An embedding
    learns what a category means from the rows that carry it, where one-hot columns
    would widen the first layer by every category.
    """

    def __init__(self, numeric_features: int, cardinalities: Sequence[int], num_outputs: int,
                 hidden: Sequence[int] = (128, 64), dropout: float = 0.1,
                 embedding_dim: int | None = None):
        super().__init__()
        if numeric_features + len(cardinalities) == 0:
            raise ValueError("TabularMLP needs at least one numeric or categorical feature")
        self.numeric_features = numeric_features
        self.embeddings = nn.ModuleList(
            nn.Embedding(cardinality, embedding_dim or min(16, (cardinality + 1) // 2))
            for cardinality in cardinalities
        )
        width = numeric_features + sum(e.embedding_dim for e in self.embeddings)
        blocks: list[nn.Module] = []
        for size in hidden:
            blocks += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(width, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        codes = x[:, self.numeric_features :].long()
        parts = [x[:, : self.numeric_features]]
        for column, embedding in enumerate(self.embeddings):
            parts.append(embedding(codes[:, column]))
        return self.head(self.body(torch.cat(parts, dim=1)))


PROJECT_MODELS["tabular_mlp"] = TabularMLP
PROJECT_MODELS["unet"] = UNet
PROJECT_MODELS["small_fcos"] = SmallFCOS


def model_class(name: str, key: str = "model.name") -> type[nn.Module]:
    """The ``nn.Module`` class that ``name`` names: one of :data:`PROJECT_MODELS`, or
    ``"package.module:ClassName"``, imported, for a model of the user's own."""
    if name in PROJECT_MODELS:
        return PROJECT_MODELS[name]
    module_name, _, class_name = name.partition(":")
    if not module_name or not class_name:
        raise ParameterError(
            f"{key}: unknown model {name!r}. Give one of {', '.join(sorted(PROJECT_MODELS))} "
            "or the import path of an nn.Module class, as 'package.module:ClassName'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ParameterError(f"{key}: cannot import module {module_name!r} of {name!r}: "
                             f"{error}. Is its package installed, or on the PYTHONPATH?"
                             ) from error
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ParameterError(f"{key}: module {module_name!r} has no {class_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ParameterError(f"{key}: {name!r} is {cls!r}, not a torch.nn.Module subclass")
    return cls


def build_from_class(cls: type[nn.Module], kwargs: Mapping[str, Any],
                     given: Mapping[str, Any], key: str = "model.kwargs") -> nn.Module:
    """``cls`` built with the user's ``kwargs`` and, of ``given`` (the shapes the data
    decides: ``num_outputs``, ``cardinalities``, ``in_channels``, ...), those its
    constructor takes.

    A class takes from ``given`` what it names, so a model of the user's own declares
    the shapes it needs and nothing else. The arguments are checked against the
    constructor's signature before it runs, so that an error names the key and
    argument at fault rather than surfacing from deep inside the model.
    """
    parameters = inspect.signature(cls).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    unknown = [name for name in kwargs if name not in parameters and not takes_any]
    if unknown:
        takes = [n for n, p in parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD,
                                                                 p.KEYWORD_ONLY)]
        raise ParameterError(f"{key}.{unknown[0]}: {cls.__name__} takes no argument "
                             f"{unknown[0]!r}. It takes: {', '.join(takes) or 'none'}")
    clashing = [name for name in kwargs if name in given]
    if clashing:
        raise ParameterError(f"{key}.{clashing[0]}: set from the data "
                             f"({given[clashing[0]]!r}); remove it from {key}")
    arguments = {name: value for name, value in given.items()
                 if name in parameters or takes_any} | dict(kwargs)
    missing = [name for name, p in parameters.items()
               if p.default is p.empty and name not in arguments
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if missing:
        raise ParameterError(
            f"{key}.{missing[0]}: {cls.__name__} needs argument {missing[0]!r}, which the "
            f"data does not give (it gives {', '.join(given) or 'nothing'}); set it in {key}"
        )
    return cls(**arguments)


def build(name: str, given: Mapping[str, Any], kwargs: Mapping[str, Any],
          key: str = "model.name") -> nn.Module:
    """A fresh model by ``model.name``: a torchvision model for images (``given`` holds
    ``num_classes`` and ``in_channels``), or a class of :data:`PROJECT_MODELS` or of the
    user's own by import path, taking from ``given`` the shapes it names."""
    check_model_name(name, key)
    if name not in PROJECT_MODELS and ":" not in name:  # a torchvision model
        if "in_channels" not in given:
            raise ParameterError(f"{key}: {name} is a torchvision image model; this task's "
                                 f"inputs are not images. Use one of "
                                 f"{', '.join(sorted(PROJECT_MODELS))} or an import path")
        return _torchvision_model(name, given, kwargs)
    return build_from_class(model_class(name, key), kwargs, given)

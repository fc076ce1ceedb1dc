"""The bundled model zoo and model resolution (a zoo id or a checkpoint file).

``assets/models/manifest.json`` lists the bundled models: ``{"models": [entry, ...]}`` where each entry has
``id, file, sha256, arch_config, dataset, preprocessing, split, epochs, seed, optimizer, test_accuracy,
params, macs, size_bytes, train_seconds_per_epoch, eval_seconds, command`` (``command`` rebuilds the file).
Checksums are verified on load.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..data import DATASETS, Preprocessing, get_info
from .architectures import ArchConfig, build_model
from .checkpoint import CheckpointError, load_model, sha256_file
from .torchvision_archs import IMAGENET_MEAN, IMAGENET_STD, PREFIX, pretrained_state_dict, torchvision_name

__all__ = [
    "MODELS_DIR",
    "DEFAULT_MODEL",
    "IMAGENET",
    "IMAGENET_PREPROCESSING",
    "LoadedModel",
    "ZooEntry",
    "check_fits",
    "example_inputs",
    "get_entry",
    "list_models",
    "load_pretrained",
    "load_zoo_model",
    "resolve_model",
]

MODELS_DIR = Path(__file__).resolve().parent.parent.parent / "assets" / "models"
DEFAULT_MODEL = "vgg11_bn-mnist5k"
#: Dataset name of torchvision's pretrained models (ImageNet is not bundled: groups, plans, fusion and export
#: work on them, evaluation needs the data).
IMAGENET = "imagenet"
#: torchvision's ImageNet inputs: 224 x 224 RGB normalised with ImageNet's mean and std.
IMAGENET_PREPROCESSING = Preprocessing(size=224, channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD)


@dataclass(frozen=True)
class ZooEntry:
    """One bundled model, as listed in the manifest."""

    id: str
    file: str
    sha256: str
    arch_config: dict
    dataset: str
    preprocessing: dict
    test_accuracy: float
    params: int = 0
    macs: int = 0
    size_bytes: int = 0
    split: str = ""
    epochs: int = 0
    seed: int = 0
    optimizer: dict = field(default_factory=dict)
    train_seconds_per_epoch: float = 0.0
    eval_seconds: float = 0.0
    command: str = ""
    description: str = ""

    @property
    def arch(self) -> str:
        return self.arch_config["arch"]

    @property
    def width(self) -> float:
        return float(self.arch_config.get("width", 1.0))

    @property
    def path(self) -> Path:
        return MODELS_DIR / self.file

    def to_dict(self) -> dict:
        d = asdict(self)
        d["arch"], d["width"], d["path"] = self.arch, self.width, str(self.path)
        return d


@dataclass
class LoadedModel:
    """A model ready to prune: the module (eval mode), how to feed it, and where it came from."""

    model: nn.Module
    config: ArchConfig
    dataset: str
    preprocessing: Preprocessing
    name: str
    entry: ZooEntry | None = None

    @property
    def example_inputs(self) -> torch.Tensor:
        return example_inputs(self.preprocessing)


def _manifest_path() -> Path:
    return MODELS_DIR / "manifest.json"


def list_models() -> list[ZooEntry]:
    """The bundled models (empty if the manifest is absent)."""
    path = _manifest_path()
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    known = set(ZooEntry.__dataclass_fields__)
    return [ZooEntry(**{k: v for k, v in e.items() if k in known}) for e in data.get("models", [])]


def get_entry(model_id: str) -> ZooEntry:
    """The manifest entry of ``model_id``; ValueError listing the bundled ids otherwise."""
    for e in list_models():
        if e.id == model_id:
            return e
    ids = ", ".join(e.id for e in list_models()) or "none (assets/models/manifest.json is missing)"
    raise ValueError(f"no bundled model {model_id!r}; bundled models: {ids}")


@functools.lru_cache(maxsize=16)
def _load_verified(model_id: str) -> tuple[nn.Module, ArchConfig]:
    entry = get_entry(model_id)
    if not entry.path.exists():
        raise CheckpointError(f"bundled model file {entry.file} is missing; rebuild it with: {entry.command}")
    digest = sha256_file(entry.path)
    if digest != entry.sha256:
        raise CheckpointError(
            f"bundled model {model_id} fails its checksum (sha256 {digest[:12]}... expected "
            f"{entry.sha256[:12]}...): the file is corrupt or was changed; rebuild it with: {entry.command}"
        )
    model, config, _ = load_model(entry.path, ArchConfig.from_dict(entry.arch_config))
    for p in model.parameters():  # shared, cached object: callers must copy before changing it
        p.requires_grad_(False)
    return model.eval(), config


def load_zoo_model(model_id: str) -> LoadedModel:
    """Load a bundled model (checksum verified, cached). The module is shared: copy it before changing it."""
    entry = get_entry(model_id)
    model, config = _load_verified(model_id)
    return LoadedModel(model, config, entry.dataset, Preprocessing.from_dict(entry.preprocessing), entry.id, entry)


def example_inputs(preprocessing: Preprocessing, batch: int = 1) -> torch.Tensor:
    """A zero batch of the shape a model with this preprocessing contract takes."""
    return torch.zeros((batch, *preprocessing.input_shape))


def resolve_model(spec: str, arch: str | None = None, dataset: str | None = None) -> LoadedModel:
    """A bundled model id, a checkpoint file (safetensors, or a torch file loaded with weights_only), or
    ``torchvision:NAME`` for torchvision's pretrained ImageNet weights (:func:`load_pretrained`; online only).

    For a checkpoint, the architecture comes from its safetensors metadata (files saved by this project) or
    from ``arch`` plus the shapes; the dataset (and so the preprocessing contract) from the metadata or
    ``dataset``.
    """
    path = Path(spec)
    if not path.exists() and isinstance(spec, str) and spec.startswith(PREFIX):
        return load_pretrained(spec, dataset)
    if not path.exists() and (not path.suffix or spec in {e.id for e in list_models()}):
        return load_zoo_model(spec)  # ids may contain dots (resnet18_w0.5-mnist5k)
    if not path.exists():
        raise CheckpointError(f"checkpoint {spec} does not exist (and is no bundled model id)")
    config = None
    model, config, meta = load_model(path, config, arch=arch)
    ds = dataset or meta.get("dataset")
    if ds is None:
        raise ValueError(
            f"say which dataset {path.name} was trained on (--dataset, one of {', '.join(DATASETS)}): it "
            "decides the inputs the model is evaluated on"
        )
    info = get_info(ds)
    pre = meta.get("preprocessing") if meta.get("dataset") in (None, ds) else None
    try:
        preprocessing = Preprocessing.from_dict(pre) if isinstance(pre, dict) else info.preprocessing
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"the preprocessing stored in {path.name} is invalid ({exc})") from None
    for p in model.parameters():
        p.requires_grad_(False)
    check_fits(model, ds, preprocessing)
    return LoadedModel(model.eval(), config, ds, preprocessing, path.name)


def load_pretrained(arch: str, dataset: str | None = None) -> LoadedModel:
    """torchvision's pretrained ImageNet model ``arch`` (``'torchvision:resnet18'``, ...), with no weights file.

    The weights are torchvision's default ones, downloaded into torch's cache the first time (online only).

    Parameters
    ----------
    arch : str
        ``'torchvision:NAME'`` with NAME one of :data:`.torchvision_archs.TORCHVISION_ARCHS`.
    dataset : str, optional
        Must be None (or a dataset of 1,000 classes): the pretrained classifier has ImageNet's 1,000 outputs.
        The model's dataset is :data:`IMAGENET` with :data:`IMAGENET_PREPROCESSING` (224 x 224 inputs).

    Raises
    ------
    ValueError
        For an unknown name, a dataset that is not ImageNet-sized, or (one sentence) when the weights cannot
        be downloaded because the machine is offline.
    """
    name = torchvision_name(arch)
    if name is None:
        raise ValueError(f"{arch!r} is not a torchvision architecture (write {PREFIX}NAME)")
    if dataset is not None and dataset != IMAGENET:
        info = get_info(dataset)
        if info.num_classes != 1000:
            raise ValueError(
                f"torchvision's pretrained {name} classifies ImageNet's 1000 classes, but {info.name} has "
                f"{info.num_classes}: give weights trained on it instead, e.g. `python -m intrafusion groups FILE "
                f"--arch {arch} --dataset {dataset}`"
            )
    state_dict = pretrained_state_dict(name)  # ValueError, one sentence, when offline
    config = ArchConfig(arch, num_classes=1000, in_channels=3)
    model = build_model(config)
    model.load_state_dict(state_dict)
    for p in model.parameters():
        p.requires_grad_(False)
    return LoadedModel(model.eval(), config, IMAGENET, IMAGENET_PREPROCESSING, arch)


def _output_classes(model: nn.Module, preprocessing: Preprocessing) -> tuple[int | None, str]:
    """Number of logits of one forward pass on a zero input, or None and the first line of the error."""
    try:
        with torch.no_grad():
            out = model(example_inputs(preprocessing))
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        return None, (str(exc).splitlines() or [type(exc).__name__])[0]
    if out.ndim != 2 or out.shape[0] != 1:
        return None, f"it returns shape {tuple(out.shape)}, not (batch, classes)"
    return int(out.shape[1]), ""


def check_fits(model: nn.Module, dataset: str, preprocessing: Preprocessing | None = None) -> None:
    """Refuse a model that cannot be evaluated on ``dataset``: one forward pass of a zero input.

    The model must take the dataset's input shape (``preprocessing.input_shape``) and return one logit per class
    (``num_classes``). The message names the datasets the model does fit, if any.

    Raises
    ------
    CheckpointError
        If the forward pass fails or the number of logits differs from the dataset's number of classes.
    """
    info = get_info(dataset)
    pre = preprocessing or info.preprocessing
    was_training = model.training
    model.eval()
    try:
        classes, error = _output_classes(model, pre)
        if classes == info.num_classes:
            return
        fits = [d.id for d in DATASETS.values() if d.id != dataset
                and _output_classes(model, d.preprocessing)[0] == d.num_classes]
    finally:
        model.train(was_training)
    if classes is None:
        problem = f"the model does not take {info.name} inputs (shape {pre.input_shape}): {error}"
    else:
        problem = (f"the model has {classes} outputs but {info.name} has {info.num_classes} classes, so its "
                   "accuracy would mean nothing")
    hint = (f"It seems to fit {', '.join(fits)}: pick the dataset it was trained on (--dataset)." if fits else
            "It fits none of the known datasets; check the architecture (--arch) and the number of classes.")
    raise CheckpointError(f"{problem}. {hint}")

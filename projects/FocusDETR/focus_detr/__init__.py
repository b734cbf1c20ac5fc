"""Focus-DETR as a Detectron2 project: foreground token selection, cascade dual-attention encoder, DINO decoder."""
import re
from importlib import metadata

# The oldest torch with every API the package calls: torch.library.custom_op / register_fake (2.4) and
# torch.serialization.safe_globals (2.5). Building the extension works with older ones (setup.py).
MIN_TORCH_VERSION = "2.5"


def _torch_version():
    """The installed torch's version, read from its distribution metadata: importing torch takes seconds, which a
    command spends after ``focus_detr.entry_point`` has set it up."""
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:  # a torch built in place has no metadata: ask it
        import torch

        return str(torch.__version__)


def _major_minor(version):
    return tuple(int(part) for part in re.match(r"(\d+)\.(\d+)", version).groups())


if _major_minor(_torch_version()) < _major_minor(MIN_TORCH_VERSION):
    raise ImportError(
        f"focus_detr needs torch >= {MIN_TORCH_VERSION} at run time, this environment has torch {_torch_version()}"
    )

__all__ = ["FocusDETRPredictor"]


def __getattr__(name):
    # Imported on first use: ``import focus_detr.layers`` (the op alone) must not load the engine, detectron2's
    # training machinery and the data code.
    if name == "FocusDETRPredictor":
        from .engine.predictor import FocusDETRPredictor

        return FocusDETRPredictor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Focus-DETR as a Detectron2 project: foreground token selection, cascade dual-attention encoder, DINO decoder."""
import torch

# The oldest torch with every API the package calls: torch.library.custom_op / register_fake (2.4) and
# torch.serialization.safe_globals (2.5). Building the extension works with older ones (setup.py).
MIN_TORCH_VERSION = "2.5"

if torch.__version__ < MIN_TORCH_VERSION:
    raise ImportError(
        f"focus_detr needs torch >= {MIN_TORCH_VERSION} at run time, this environment has torch {torch.__version__}"
    )

__all__ = ["FocusDETRPredictor"]


def __getattr__(name):
    # Imported on first use: ``import focus_detr.layers`` (the op alone) must not load the engine, detectron2's
    # training machinery and the data code.
    if name == "FocusDETRPredictor":
        from .engine.predictor import FocusDETRPredictor

        return FocusDETRPredictor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Shared test helpers: the official parity fixture and small Focus-DETR models."""
from pathlib import Path

import pytest
import torch
from torch.torch_version import TorchVersion

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURE_PATH = REPO_ROOT.parent / "shared" / "fixtures" / "focus_detr_tiny.pt"
TINY_CONFIG = REPO_ROOT / "configs" / "testing" / "focus_detr_tiny_fixture.py"


@pytest.fixture(scope="session")
def parity_fixture():
    """The official outputs of the tiny configuration (../shared/fixtures/focus_detr_tiny.pt)."""
    if not FIXTURE_PATH.exists():
        pytest.skip(f"parity fixture not found at {FIXTURE_PATH} (it lives in the project's shared/ folder)")
    with torch.serialization.safe_globals([TorchVersion]):
        return torch.load(FIXTURE_PATH, map_location="cpu", weights_only=True)


def build_tiny_model(**overrides):
    """The fixture's tiny configuration, with ``dotted.key=value`` style overrides given as a dict."""
    from detectron2.config import LazyConfig, instantiate

    cfg = LazyConfig.load(str(TINY_CONFIG))
    cfg = LazyConfig.apply_overrides(cfg, [f"{k}={v!r}" for k, v in overrides.items()])
    return instantiate(cfg.model)


@pytest.fixture
def tiny_model(parity_fixture):
    """The tiny configuration loaded with the official fixture weights, in eval mode."""
    from focus_detr.checkpoint import FocusDETRCheckpointer

    torch.manual_seed(0)
    model = build_tiny_model()
    FocusDETRCheckpointer(model).load_model_state(parity_fixture["state_dict"])
    return model.eval()

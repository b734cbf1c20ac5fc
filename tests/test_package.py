"""Importing the package in an environment whose torch is too old says so, instead of failing later on a missing
torch API."""
import importlib

import pytest
import torch
from torch.torch_version import TorchVersion

import focus_detr


def test_too_old_torch_is_named_at_import(monkeypatch):
    monkeypatch.setattr(torch, "__version__", TorchVersion("2.4.1+cu121"))
    with pytest.raises(ImportError, match=r"needs torch >= 2\.5 at run time, this environment has torch 2\.4\.1\+cu121"):
        importlib.reload(focus_detr)
    monkeypatch.undo()
    importlib.reload(focus_detr)  # the installed torch passes


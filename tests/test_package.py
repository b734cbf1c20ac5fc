"""Importing the package in an environment whose torch is too old says so, instead of failing later on a missing
torch API."""
import importlib
from importlib import metadata

import pytest
import torch

import focus_detr


def test_too_old_torch_is_named_at_import(monkeypatch):
    installed_version = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "2.4.1+cu121" if name == "torch" else installed_version(name))
    with pytest.raises(ImportError, match=r"needs torch >= 2\.5 at run time, this environment has torch 2\.4\.1\+cu121"):
        importlib.reload(focus_detr)
    monkeypatch.undo()
    importlib.reload(focus_detr)  # the installed torch passes


def test_the_version_read_without_importing_torch_is_the_imported_ones():
    # the metadata may lack the local label (2.14.1 for 2.14.1+cu130)
    assert str(torch.__version__).startswith(focus_detr._torch_version())

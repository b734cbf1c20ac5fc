"""Where a weights path is taken (read_weights_file, FocusDETRCheckpointer.load, the engine's
AtomicDetectionCheckpointer.load and load_inference_weights), a pathlib.Path works like a str, and a path that is no
path, names no file or names no regular file is one line saying so (not urllib's AttributeError, detectron2's
assertion, or "not found" for a file that exists)."""
import io
import os

import pytest
import torch
from torch import nn

from conftest import build_tiny_model
from focus_detr.checkpoint import FocusDETRCheckpointer, UnreadableCheckpointError, read_weights_file
from focus_detr.engine.checkpoint import AtomicDetectionCheckpointer
from focus_detr.engine.inference_weights import load_inference_weights

LOADERS = {
    "read_weights_file": read_weights_file,
    "FocusDETRCheckpointer.load": lambda path: FocusDETRCheckpointer(nn.Linear(2, 2)).load(path),
    "AtomicDetectionCheckpointer.load": lambda path: AtomicDetectionCheckpointer(nn.Linear(2, 2)).load(path),
    "load_inference_weights": lambda path: load_inference_weights(nn.Linear(2, 2), {}, path),
}


def test_a_pathlib_path_loads_wherever_a_weights_path_is_taken(tmp_path):
    trained = build_tiny_model().state_dict()
    path = tmp_path / "model.pth"
    torch.save({"model": trained}, path)
    assert read_weights_file(path).content["model"].keys() == trained.keys()
    for load in (lambda model: FocusDETRCheckpointer(model).load(path),
                 lambda model: AtomicDetectionCheckpointer(model).load(path),
                 lambda model: load_inference_weights(model, {}, path)):
        model = build_tiny_model()
        load(model)
        assert all(torch.equal(value, trained[key]) for key, value in model.state_dict().items())


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("path, shown", [
    ({}, "dict (an in-memory state dict loads with FocusDETRCheckpointer.load_model_state)"),
    (3, "int"),
    (io.BytesIO(b""), "BytesIO"),
])
def test_a_weights_path_that_is_no_path_is_named(loader, path, shown):
    with pytest.raises(TypeError) as error:
        LOADERS[loader](path)
    assert str(error.value) == f"checkpoint path must be a str or os.PathLike (a weights file), got {shown}"


def test_read_weights_file_needs_a_path():
    with pytest.raises(TypeError, match=r"^checkpoint path must be a str or os.PathLike \(a weights file\), got None$"):
        read_weights_file(None)
    with pytest.raises(ValueError, match="^checkpoint path is empty: give a weights file$"):
        read_weights_file("")


@pytest.mark.parametrize("loader", LOADERS)
def test_a_named_pipe_or_a_device_is_not_a_regular_file(loader, tmp_path):
    pipe = tmp_path / "pipe.pth"
    os.mkfifo(pipe)  # reading it would wait for a writer forever
    for path, kind in ((str(pipe), "a named pipe (FIFO)"), ("/dev/zero", "a character device")):
        with pytest.raises(UnreadableCheckpointError) as error:
            LOADERS[loader](path)
        assert str(error.value) == f"checkpoint {path} is {kind}, not a regular file: give a weights file"


@pytest.mark.parametrize("loader", ["FocusDETRCheckpointer.load", "AtomicDetectionCheckpointer.load"])
def test_a_missing_checkpoint_is_one_line_and_a_tilde_is_said_not_to_be_expanded(loader, tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        LOADERS[loader](str(tmp_path / "missing.pth"))
    assert str(error.value) == f"checkpoint not found: {tmp_path}/missing.pth"
    with pytest.raises(FileNotFoundError) as error:
        LOADERS[loader]("~/no_such_focus_detr_checkpoint.pth")
    assert str(error.value) == (
        "checkpoint not found: ~/no_such_focus_detr_checkpoint.pth (~ is not expanded here: give the full path)"
    )


def test_a_local_file_with_detectron2s_query_loads_in_the_engines_checkpointer(tmp_path):
    weights = {"weight": torch.ones(2, 2), "bias": torch.ones(2)}
    torch.save({"model": weights}, tmp_path / "model.pth")
    model = nn.Linear(2, 2)
    AtomicDetectionCheckpointer(model).load(f"{tmp_path}/model.pth?matching_heuristics=True")
    assert torch.equal(model.weight, weights["weight"])


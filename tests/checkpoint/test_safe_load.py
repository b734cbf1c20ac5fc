"""No weights file runs code when loaded, whatever its format; damaged files are refused with one line naming them."""
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from focus_detr.checkpoint import FocusDETRCheckpointer, UnreadableCheckpointError, read_weights_file
from hostile_files import MALICIOUS_FORMATS, damaged_files, write_detectron2_pkl, write_malicious


@pytest.mark.parametrize("name", MALICIOUS_FORMATS)
def test_malicious_file_runs_no_code_and_is_named(tmp_path, name):
    marker = tmp_path / "marker"
    path = write_malicious(tmp_path / name, marker)
    with pytest.raises(UnreadableCheckpointError) as raised:
        FocusDETRCheckpointer(nn.Linear(1, 1)).load(path)
    message = str(raised.value)
    assert not marker.exists()
    assert message.startswith(f"cannot read checkpoint {path}: it refers to posix.system, which is not allowed")
    assert "\n" not in message


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_detectron2_model_zoo_pkl_still_loads(tmp_path, protocol):
    source = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    with torch.no_grad():
        for parameter in source.parameters():
            parameter.normal_()
    path = write_detectron2_pkl(tmp_path / "R-50.pkl", source.state_dict(), protocol)
    target = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    FocusDETRCheckpointer(target).load(path)
    for name, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], value), name


def test_caffe2_style_pickle_of_blobs_still_reads(tmp_path):
    path = tmp_path / "caffe2.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": {"conv1_w": np.ones((2, 2), np.float32), "conv1_w_momentum": np.zeros(1)}}, f, 2)
    data = FocusDETRCheckpointer(nn.Linear(1, 1))._load_file(str(path))
    assert data["__author__"] == "Caffe2" and list(data["model"]) == ["conv1_w"]


def test_numpy_arrays_of_python_objects_are_refused(tmp_path):
    path = tmp_path / "objects.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": np.array([1, "x"], dtype=object)}}, f)
    with pytest.raises(UnreadableCheckpointError, match="numpy arrays of Python objects"):
        read_weights_file(str(path))


EXPECTED_WHY = {
    "zero-byte": "the file is empty (0 bytes)",
    "truncated": "the file is truncated or corrupt",
    "random bytes": "it is neither a torch file (zip archive), a safetensors file nor a valid pickle",
    "not a pickle": "it is neither a torch file (zip archive), a safetensors file nor a valid pickle",
    "not a zip": "the file is truncated or corrupt",
    "cut inside a record": "the file is truncated or corrupt",
    "truncated safetensors": "(the file is truncated or its header is wrong)",
    "wrong layout (a list)": "it holds a list, not a dict of weights",
    "wrong layout (strings as weights)": "weight 'w' is a str, not a tensor or array",
}


def test_damaged_files_get_one_line_naming_file_and_problem(tmp_path):
    for description, path in damaged_files(tmp_path).items():
        with pytest.raises(ValueError) as raised:
            FocusDETRCheckpointer(nn.Linear(1, 1)).load(path)
        message = str(raised.value)
        assert message.startswith(f"cannot {'read' if 'layout' not in description else 'use'} checkpoint {path}: "), description
        assert EXPECTED_WHY[description] in message, (description, message)
        assert "\n" not in message and len(message) < 300, description


def test_key_mismatch_lists_counts_and_first_keys_not_every_key(tmp_path):
    model = nn.ModuleDict({"transformer": nn.ModuleList([nn.Linear(2, 2) for _ in range(500)])})
    state = {f"transformer.{i}.other.weight": torch.zeros(1) for i in range(2000)}
    path = tmp_path / "other_model.pth"
    torch.save({"model": state}, path)
    with pytest.raises(ValueError) as raised:
        FocusDETRCheckpointer(model).load(str(path))
    message = str(raised.value)
    assert message.startswith(f"checkpoint {path} does not fit the model: 1000 missing keys (transformer.0.bias, ")
    assert "2000 unexpected keys (transformer.0.other.weight, " in message and "(1997 more)" in message
    assert len(message) < 500


def test_a_weight_of_another_shape_is_a_mismatch_not_also_a_missing_key(tmp_path):
    model = nn.ModuleDict({"transformer": nn.Linear(4, 3)})
    path = tmp_path / "other_classes.pth"
    torch.save({"model": {"transformer.weight": torch.zeros(5, 4), "transformer.bias": torch.zeros(3)}}, path)
    with pytest.raises(ValueError) as raised:
        FocusDETRCheckpointer(model).load(str(path))
    assert str(raised.value) == (f"checkpoint {path} does not fit the model: 1 shape mismatches (transformer.weight: "
                                 "(5, 4) in the checkpoint, (3, 4) in the model); the config builds the model with "
                                 "other sizes than the checkpoint's (compare its num_queries, num_classes, widths and "
                                 "layer counts with the training run's config.yaml)")

import importlib.util

import pytest
import torch

from conftest import REPO_ROOT, TINY_CONFIG, build_tiny_model
from focus_detr.checkpoint import FocusDETRCheckpointer


def _convert_module():
    path = REPO_ROOT / "tools" / "convert_detrex_checkpoint.py"
    spec = importlib.util.spec_from_file_location("convert_detrex_checkpoint", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_converted_checkpoint_loads_strictly_and_gives_the_same_model(parity_fixture, tmp_path):
    official = tmp_path / "official.pth"
    converted = tmp_path / "converted.pth"
    torch.save({"model": parity_fixture["state_dict"], "iteration": 89999}, official)
    convert = _convert_module()
    assert convert.main([str(official), str(converted), "--config-file", str(TINY_CONFIG)]) == 0
    assert set(tmp_path.iterdir()) == {official, converted}  # no temporary file left behind

    direct, via_file = build_tiny_model().eval(), build_tiny_model().eval()
    FocusDETRCheckpointer(direct).load(str(official))
    FocusDETRCheckpointer(via_file).load(str(converted))
    for (name, a), b in zip(direct.state_dict().items(), via_file.state_dict().values()):
        assert torch.equal(a, b), name

    with pytest.raises(SystemExit):  # already in our layout
        convert.main([str(converted), str(tmp_path / "again.pth")])


def test_the_official_file_is_never_overwritten(parity_fixture, tmp_path, capsys):
    official = tmp_path / "official.pth"
    torch.save({"model": parity_fixture["state_dict"]}, official)
    before = official.read_bytes()
    with pytest.raises(SystemExit):
        _convert_module().main([str(official), str(tmp_path / "." / "official.pth")])
    assert "is the input file: write the converted weights to another file" in capsys.readouterr().err
    assert official.read_bytes() == before

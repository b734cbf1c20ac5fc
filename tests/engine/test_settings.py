"""What a config asks for is checked before the work starts: the device it names must be one the project runs on."""
import pytest
import torch

from focus_detr.engine import resolve_device


@pytest.mark.parametrize("device", ["mps", "xpu", "meta", "hpu", "xla"])
def test_a_device_torch_knows_but_the_project_does_not_run_on_is_one_line(device):
    with pytest.raises(ValueError) as info:
        resolve_device(device)
    assert str(info.value) == (f"train.device is '{device}', which this project does not run on: use cpu or cuda "
                               "(auto, cpu, cuda, cuda:N)")


def test_the_cpu_is_one_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu:1") == resolve_device("cpu") == resolve_device("auto") == "cpu"
    with pytest.raises(ValueError, match=r"^train.device is 'cuda' but no CUDA GPU is visible; use train.device=cpu$"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match=r"^train.device 'banana' is not a torch device"):
        resolve_device("banana")


def test_a_gpu_index_past_the_visible_ones_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError) as info:
        resolve_device("cuda:5", "--device", "--device cpu")
    assert str(info.value) == "--device is 'cuda:5' but only cuda:0 to cuda:1 are visible"
    assert resolve_device("cuda:1") == "cuda:1"

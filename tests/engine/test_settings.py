"""What a config asks for is checked before the work starts: the device it names must be one the project runs on, the
output folder must have room."""
import os
import re
import shutil

import pytest
import torch

from engine_test_utils import TOY_CONFIG, toy_dataset, train_net  # noqa: F401 (fixtures)
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


def test_a_run_saved_on_a_gpu_machine_runs_on_a_cpu_one(tmp_path, monkeypatch):
    # the common config chose "cuda" when it was read on a GPU machine, and its config.yaml kept that choice: the
    # same run evaluated (or resumed) on a CPU machine stopped at "no CUDA GPU is visible"
    from detectron2.config import LazyConfig

    from conftest import REPO_ROOT
    from focus_detr.engine import load_config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    LazyConfig.save(load_config(str(REPO_ROOT / "configs" / "focus_detr_r18_trees.py")), str(tmp_path / "config.yaml"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(load_config(str(tmp_path / "config.yaml")).train.device) == "cpu"


def test_a_run_folder_in_the_tree_data_cache_is_refused_before_anything_is_written(train_net, toy_dataset, tmp_path,
                                                                                    capsys, monkeypatch):
    # results written among the tree images ran with exit 0; the next rebuild of the cache deleted them
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "data"))
    (tmp_path / "data" / "trees" / "images").mkdir(parents=True)
    output = tmp_path / "data" / "trees" / "images" / "run"
    assert train_net.cli(["--config-file", TOY_CONFIG, f"train.output_dir={output}", "train.max_iter=1"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: train.output_dir {output} is in the tree data's cache {tmp_path / 'data' / 'trees'}, which a rebuild "
        "of the data replaces whole, results included: choose a folder outside it")
    assert not output.exists()


def test_a_gpu_index_past_the_visible_ones_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError) as info:
        resolve_device("cuda:5", "--device", "--device cpu")
    assert str(info.value) == "--device is 'cuda:5' but only cuda:0 to cuda:1 are visible"
    assert resolve_device("cuda:1") == "cuda:1"


def test_a_full_disk_is_named_before_anything_is_written(tmp_path, monkeypatch):
    from focus_detr.engine import check_output_dir

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=24 * 1024))
    with pytest.raises(ValueError) as info:
        check_output_dir(str(tmp_path / "run"))
    assert str(info.value) == (f"train.output_dir {tmp_path / 'run'} has 0.0 MiB free, less than the log and the "
                               "results take (1.0 MiB): free some space or choose another train.output_dir")


def test_training_refuses_a_disk_without_room_for_one_checkpoint(train_net, toy_dataset, tmp_path, capsys,
                                                                monkeypatch):
    import focus_detr.engine.runner as runner

    monkeypatch.setattr(runner, "_checkpoint_bytes", lambda model, optimizer: 1 << 50)  # a petabyte
    assert train_net.cli(["--config-file", TOY_CONFIG, "train.max_iter=2", f"train.output_dir={tmp_path}"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"error: train.output_dir {tmp_path} has ") and "less than one checkpoint of this model " \
        "(weights and optimizer state) take (1073741824.0 MiB)" in line
    assert not list(tmp_path.glob("model_*.pth"))


def test_an_output_folder_that_is_a_dangling_link_is_named_as_one(tmp_path):
    # "train.output_dir .../runs is not writable: File exists", though nothing was in the way but a broken link
    from focus_detr.engine.settings import check_output_dir

    (tmp_path / "runs").symlink_to(tmp_path / "gone")
    for written in (str(tmp_path / "runs"), str(tmp_path / "runs") + "/"):  # a tab-completed path ends with one
        with pytest.raises(ValueError) as error:
            check_output_dir(written)
        assert str(error.value) == (f"train.output_dir {written} is a link to {tmp_path / 'gone'}, which does not "
                                    "exist: create that folder or remove the link")
    with pytest.raises(ValueError) as error:  # a run folder under an unmounted link: "No such file or directory"
        check_output_dir(str(tmp_path / "runs" / "exp1"))
    assert str(error.value) == (f"train.output_dir {tmp_path / 'runs' / 'exp1'} is in {tmp_path / 'runs'}, which is a "
                                f"link to {tmp_path / 'gone'}, which does not exist: create that folder or remove the "
                                "link")


def test_an_output_path_starting_with_a_tilde_no_shell_expanded_is_refused(tmp_path, monkeypatch):
    # 'train.output_dir="~/runs"' wrote the whole run into a folder named "~" in the working folder, exit 0
    from focus_detr.engine.settings import check_output_dir, check_output_file

    monkeypatch.chdir(tmp_path)
    expanded = os.path.expanduser("~/runs")
    with pytest.raises(ValueError, match=rf"^train.output_dir ~/runs starts with '~', which only a shell expands .*"
                                         rf"e.g. {re.escape(expanded)}$"):
        check_output_dir("~/runs")
    with pytest.raises(ValueError, match=r"^--output ~/model.onnx starts with '~'"):
        check_output_file("~/model.onnx", "--output", "model.onnx")
    assert not os.path.exists(tmp_path / "~")

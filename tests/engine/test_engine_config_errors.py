"""A config file that does not parse, or that raises while it runs (a NameError, a failed import, any exception), is
one line naming the file that failed (also one the config imports), the line and the error; no traceback."""
import os
import subprocess
import sys

import pytest

from cli_output import error_lines, shows_traceback
from engine_test_utils import REPO_ROOT, train_net  # noqa: F401 (fixture)


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


CASES = {
    "syntax error": (
        {"cfg.py": "x = 1\ny = (\nz = 3\n"},
        "error: config file {cfg.py}: invalid syntax at line 2 ('(' was never closed): y = (",
    ),
    "syntax error only the compiler sees": (
        {"cfg.py": "x = 1\nreturn x\n"},
        "error: config file {cfg.py}: invalid syntax at line 2 ('return' outside function): return x",
    ),
    "NameError": (
        {"cfg.py": "a = 1\n\nb = undefined_name + 1\n"},
        "error: config file {cfg.py}: NameError at line 3: name 'undefined_name' is not defined",
    ),
    "failed import": (
        {"cfg.py": "import os\nfrom focus_detr.nowhere import model\n"},
        "error: config file {cfg.py}: ModuleNotFoundError at line 2: No module named 'focus_detr.nowhere'",
    ),
    "syntax error in an imported config": (
        {"cfg.py": "from .common.data import dataloader\n", "common/data.py": "dataloader = dict(\n    a=1,\n"},
        "error: config file {common/data.py}: invalid syntax at line 1 ('(' was never closed): dataloader = dict(",
    ),
    "NameError in an imported config": (
        {"cfg.py": "from .common.train import train\n", "common/train.py": "train = dict(max_iter=ITERATIONS)\n"},
        "error: config file {common/train.py}: NameError at line 1: name 'ITERATIONS' is not defined",
    ),
    "relative import of a missing config": (
        {"cfg.py": "x = 1\nfrom .common.optim import optimizer\n"},
        "error: config file {cfg.py}: ImportError at line 2: Cannot import name common.optim from {cfg.py}: "
        "{common/optim.py} does not exist.",
    ),
    "exception in a config's function": (
        {"cfg.py": "def schedule(epochs):\n    return 100 // epochs\n\nmax_iter = schedule(0)\n"},
        "error: config file {cfg.py}: ZeroDivisionError at line 2: integer division or modulo by zero",
    ),
    # an official config where detrex is not installed: the next step, not only the missing module
    "detrex config": (
        {"cfg.py": "from detrex.config import get_config\nfrom .models.focus_detr_r50 import model\n"},
        "error: config file {cfg.py}: ModuleNotFoundError at line 1: No module named 'detrex'; it is a detrex config: "
        "use this project's config of the same name in configs/ (e.g. configs/focus_detr_r50_4scale_12ep.py), which "
        "loads official weights too (train.init_checkpoint=FILE)",
    ),
    "invalid YAML": (
        {"cfg.yaml": "train:\n  max_iter: [1, 2\nmodel: {}\n"},
        "error: config file {cfg.yaml}: invalid YAML at line 3 (expected ',' or ']', but got ':'): model: {}",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_broken_config_is_one_line_with_file_line_and_error(train_net, tmp_path, capsys, case):
    files, expected = CASES[case]
    paths = {name: str(_write(tmp_path / name, text)) for name, text in files.items()}
    paths["common/optim.py"] = str(tmp_path / "common" / "optim.py")
    config = paths["cfg.yaml"] if "cfg.yaml" in paths else paths["cfg.py"]
    assert train_net.cli(["--config-file", config]) == 2
    captured = capsys.readouterr()
    for name, path in paths.items():
        expected = expected.replace("{" + name + "}", path)
    assert error_lines(captured.err) == [expected]
    assert not shows_traceback(captured.out + captured.err)


def test_a_config_that_is_not_text_is_named(train_net, tmp_path, capsys):
    config = tmp_path / "cfg.py"
    config.write_bytes(b"\xff\xfe\x00 binary")
    assert train_net.cli(["--config-file", str(config)]) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"error: config file {config} is not a text file (invalid start byte at byte 0)"
    ]


def test_a_syntax_error_from_the_shell_is_one_line(tmp_path):
    config = _write(tmp_path / "cfg.py", "train = dict(\n")
    result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "train_net.py"), "--config-file", str(config)],
                            capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert result.returncode == 2
    assert error_lines(result.stderr) == [
        f"error: config file {config}: invalid syntax at line 1 ('(' was never closed): train = dict("
    ]
    assert not shows_traceback(result.stderr)


# A file that loads but is not a Focus-DETR config; {out}: the test's output folder
NOT_A_FOCUS_DETR_CONFIG = {
    "empty .py": ({"cfg.py": ""}, [], "error: config file {cfg.py} defines no 'model': a Focus-DETR LazyConfig "
                  "defines model, train, dataloader, optimizer and lr_multiplier (e.g. configs/focus_detr_r18_trees.py)"),
    # detectron2's loader drops values that are neither mappings nor lists before we see the config
    "model is a number": ({"cfg.py": "model = 5\n"}, [], "error: config file {cfg.py} sets 'model' to something that "
                          "is neither a LazyCall(...) nor a dict, which detectron2's loader drops: a Focus-DETR "
                          "LazyConfig defines model, train, dataloader, optimizer and lr_multiplier (e.g. "
                          "configs/focus_detr_r18_trees.py)"),
    "empty .yaml": ({"cfg.yaml": ""}, [], "error: config file {cfg.yaml} is empty (e.g. configs/focus_detr_r18_trees.py)"),
    "a YAML list": ({"cfg.yaml": "- 1\n- 2\n"}, [], "error: config file {cfg.yaml} holds a ListConfig, not a "
                    "LazyConfig (a mapping of sections: model, train, ...; e.g. configs/focus_detr_r18_trees.py)"),
    "train is not a mapping": ({"cfg.yaml": "model: {}\ntrain: 3\n"}, [], "error: config file {cfg.yaml} has no "
                               "mapping for 'train': a Focus-DETR LazyConfig defines model, train, dataloader, "
                               "optimizer and lr_multiplier (e.g. configs/focus_detr_r18_trees.py)"),
    "no train section": ({"cfg.py": "model = dict()\n"}, [], "error: the config defines no 'train', which train_net.py "
                         "needs"),
    # an official config where detrex is installed built detrex's FOCUS_DETR, and official weights were "355 missing
    # keys" (our loader converts them to our layout)
    "the official code's model": ({"cfg.py": "model = dict(_target_='projects.focus_detr.modeling.FOCUS_DETR')\n"
                                             "train = dict()\n"}, [],
                                  "error: config file {cfg.py} builds the official code's model (projects.focus_detr."
                                  "modeling); it is a detrex config: use this project's config of the same name in "
                                  "configs/ (e.g. configs/focus_detr_r50_4scale_12ep.py), which loads official "
                                  "weights too (train.init_checkpoint=FILE)"),
    "an empty output folder": ({"cfg.py": "model = dict()\ntrain = dict(output_dir='')\n"}, ["--eval-only"],
                               "error: train.output_dir is empty: name the folder for the log, the config and the "
                               "results"),
    "training without an optimizer": ({"cfg.py": "model = dict()\ntrain = dict(output_dir='{out}')\n"}, [],
                                      "error: the config defines no 'optimizer', which training needs"),
    "evaluation without test data": ({"cfg.py": "model = dict()\ntrain = dict(output_dir='{out}', device='cpu')\n"},
                                     ["--eval-only"], "error: the config defines no 'dataloader.test', which "
                                     "evaluation needs"),
}


@pytest.mark.parametrize("case", list(NOT_A_FOCUS_DETR_CONFIG))
def test_a_config_without_the_needed_sections_is_one_line(train_net, tmp_path, capsys, case):
    files, arguments, expected = NOT_A_FOCUS_DETR_CONFIG[case]
    out = str(tmp_path / "out")
    paths = {name: str(_write(tmp_path / name, text.replace("{out}", out))) for name, text in files.items()}
    config = next(iter(paths.values()))
    assert train_net.cli(["--config-file", config, *arguments]) == 2
    captured = capsys.readouterr()
    assert error_lines(captured.err) == [expected.replace("{" + next(iter(paths)) + "}", config)]
    assert not shows_traceback(captured.out + captured.err)


def test_a_folder_given_as_config_file_is_named(train_net, tmp_path, capsys):
    assert train_net.cli(["--config-file", str(tmp_path)]) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"error: config file {tmp_path} is a folder; name one of its files (e.g. configs/focus_detr_r18_trees.py)"
    ]


def test_an_optimizer_setting_torch_refuses_names_the_section(train_net, tmp_path, capsys):
    config = os.path.join(REPO_ROOT, "configs", "focus_detr_r18_trees.py")
    assert train_net.cli(["--config-file", config, "optimizer.lr=nan", f"train.output_dir={tmp_path}"]) == 2
    assert error_lines(capsys.readouterr().err) == [
        "error: the config's optimizer settings (optimizer.*) are invalid: Invalid learning rate: nan"
    ]


def test_a_tool_override_that_does_not_fit_is_named_as_the_tools():
    from focus_detr.engine.config_files import load_config_for_tool

    config = os.path.join(REPO_ROOT, "configs", "testing", "focus_detr_tiny_fixture.py")
    with pytest.raises(ValueError) as info:
        load_config_for_tool(config, ["dataloader.train.mapper.augmentation.2.short_edge_length=[128]"],
                             ["model.transformer.num_queries=10"], "tools/soak.py")
    assert str(info.value).startswith("unknown config key 'dataloader'") and str(info.value).endswith(
        "(an override that tools/soak.py itself applies, written for the tree model's config: use "
        "configs/focus_detr_r18_trees.py or a config that keeps its data pipeline)")
    cfg = load_config_for_tool(config, [], ["model.transformer.num_queries=10"], "tools/soak.py")
    assert cfg.model.transformer.num_queries == 10


def test_a_runs_saved_config_yaml_loads_with_the_tree_datasets_it_names(tmp_path, monkeypatch):
    # `--config-file output/run/config.yaml` (detectron2's saved config) said trees_val "is not registered": the .py
    # config it was saved from registers them, and a YAML file runs no code
    from detectron2.config import LazyConfig
    from detectron2.data import DatasetCatalog

    from focus_detr.engine import load_config

    saved = tmp_path / "config.yaml"
    LazyConfig.save(load_config(os.path.join(REPO_ROOT, "configs", "focus_detr_r18_trees.py")), str(saved))
    # the catalog (a UserDict) without the tree sets; monkeypatch puts the whole catalog back at the end
    others = {name: loader for name, loader in DatasetCatalog.data.items() if not name.startswith("trees_")}
    monkeypatch.setattr(DatasetCatalog, "data", others)
    assert "trees_val" not in DatasetCatalog.list()
    cfg = load_config(str(saved))
    assert {"trees_train", "trees_val"} <= set(DatasetCatalog.list())
    assert cfg.dataloader.test.dataset.names == "trees_val"

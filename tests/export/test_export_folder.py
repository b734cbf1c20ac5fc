"""An export replaces an earlier one only once the new graph and its model.json are written and verified
(``focus_detr.export.folder``), an evaluation likewise, and refuses weights that are not finite before it starts."""
import json
import os
import sys

import pytest
import torch

from conftest import REPO_ROOT, TINY_CONFIG

sys.path.insert(0, str(REPO_ROOT / "tests" / "engine"))  # cli_output

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from cli_output import error_lines, shows_traceback  # noqa: E402
from focus_detr.export.folder import install_export  # noqa: E402

TREE_CONFIG = TINY_CONFIG.parents[1] / "focus_detr_r18_trees.py"  # has a test set
EARLIER = {"model.onnx": "the earlier graph", "model.json": "{}", "evaluation.json": "{}"}


def _earlier_export(folder):
    folder.mkdir()
    for name, text in EARLIER.items():
        (folder / name).write_text(text)
    return folder


def _contents(folder):
    return {p.name: p.read_bytes().decode(errors="replace") if p.is_file() else "folder" for p in folder.iterdir()}


def _argv(output, *overrides):
    return ["--config-file", str(TINY_CONFIG), "--output", str(output), "--sample-size", "160", "192", "--threads", "1",
            *overrides]


def test_non_finite_weights_are_one_line_and_leave_the_earlier_export(export_tool, parity_fixture, tmp_path, capfd):
    # a diverged run's checkpoint replaced the earlier graph by one finding nothing, then the verification's
    # FloatingPointError ended in a traceback
    state = dict(parity_fixture["state_dict"])
    for key in ("class_embed.0.weight", "transformer.decoder.class_embed.0.weight"):  # the official file's two copies
        state[key] = torch.full_like(state[key], float("nan"))
    checkpoint = tmp_path / "diverged.pth"
    torch.save({"model": state}, checkpoint)
    output = _earlier_export(tmp_path / "onnx")
    argv = _argv(output, f"+train.init_checkpoint={checkpoint}")
    assert export_tool.run_reporting_errors(export_tool.cli, export_tool.parse_args(argv)) == 2
    # (error_lines: a logger an earlier in-process test left writing to a closed stream adds its own noise)
    err = capfd.readouterr().err
    assert error_lines(err) == [f"error: the weights of {checkpoint} are not finite: class_embed.0.weight holds NaN "
                                "or infinite values; a run that diverged saves such weights: use a checkpoint from "
                                "before it diverged"]
    assert not shows_traceback(err)
    assert _contents(output) == EARLIER


def test_a_verification_that_fails_leaves_the_earlier_export(export_tool, tmp_path, monkeypatch, capfd):
    output = _earlier_export(tmp_path / "onnx")

    def failing(*args):
        raise FloatingPointError("FocusDETR: the predicted boxes of image 0 contain infinite or NaN values")

    monkeypatch.setattr(export_tool, "compare_with_pytorch", failing)
    with pytest.raises(FloatingPointError):
        export_tool.main(export_tool.parse_args(_argv(output)))
    assert _contents(output) == EARLIER  # and no temporary folder left

    monkeypatch.setattr(export_tool, "compare_with_pytorch", lambda *args: ("160x192: ... MISMATCH", False))
    assert export_tool.run_reporting_errors(export_tool.cli, export_tool.parse_args(_argv(output))) == 1
    assert (f"the new graph differs from PyTorch: it is not written, and the earlier export in {output} is kept as "
            "it was") in capfd.readouterr().err
    assert _contents(output) == EARLIER
    # results without a graph are no earlier export to keep: the new graph is written, to be inspected
    results_only = tmp_path / "results_only"
    results_only.mkdir()
    (results_only / "evaluation.json").write_text("{}")
    assert export_tool.run_reporting_errors(export_tool.cli, export_tool.parse_args(_argv(results_only))) == 1
    assert sorted(os.listdir(results_only)) == ["model.json", "model.onnx"]


def test_a_folder_named_model_json_is_refused_before_the_export_and_before_the_replacement(export_tool, tmp_path,
                                                                                          monkeypatch, capfd):
    # the earlier model.onnx was overwritten, then writing model.json failed naming '.model.json.ie5d72cg.tmp'
    output = _earlier_export(tmp_path / "onnx")
    (output / "model.json").unlink()
    (output / "model.json").mkdir()
    expected = f"error: {output / 'model.json'} is a folder, where the export writes its model.json: move or remove it"
    assert export_tool.run_reporting_errors(export_tool.cli, export_tool.parse_args(_argv(output))) == 2
    assert capfd.readouterr().err.strip() == expected

    # made while the export runs: found before anything is replaced
    (output / "model.json").rmdir()
    real_verify = export_tool.verify

    def verify_while_a_folder_appears(*args):
        (output / "model.json").mkdir()
        return real_verify(*args)

    monkeypatch.setattr(export_tool, "verify", verify_while_a_folder_appears)
    assert export_tool.run_reporting_errors(export_tool.cli, export_tool.parse_args(_argv(output))) == 2
    assert capfd.readouterr().err.strip().splitlines()[-1] == expected
    assert _contents(output) == {"model.onnx": "the earlier graph", "evaluation.json": "{}", "model.json": "folder"}


def test_install_export_undoes_its_moves_when_one_fails_and_names_the_final_file(tmp_path, monkeypatch):
    folder = _earlier_export(tmp_path / "onnx")
    stage = folder / ".export.x.partial"
    stage.mkdir()
    (stage / "model.onnx").write_text("the new graph")
    (stage / "model.json").write_text('{"new": 1}')
    real_replace = os.replace

    def replace_failing_on_model_json(source, target):  # the new one's move
        if str(source) == str(stage / "model.json"):
            raise PermissionError(13, "Permission denied", str(source), None, str(target))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace_failing_on_model_json)
    with pytest.raises(PermissionError) as info:
        install_export(str(stage), str(folder))
    assert info.value.filename == str(folder / "model.json")
    monkeypatch.setattr(os, "replace", real_replace)
    assert {name: text for name, text in _contents(folder).items() if name != stage.name} == EARLIER
    assert (stage / "model.onnx").read_text() == "the new graph"

    assert install_export(str(stage), str(folder)) == ["evaluation.json"]
    assert {name: text for name, text in _contents(folder).items() if name != stage.name} == {
        "model.onnx": "the new graph", "model.json": '{"new": 1}'}


def test_the_other_msda_form_is_moved_in_with_the_graph_and_an_interrupted_one_leaves_the_earlier_export(
        export_tool, tmp_path, monkeypatch, capfd):
    # --compare-msda-forms traced model_gather.onnx straight into DIR after the new graph was moved in: interrupted,
    # DIR held the new graph beside a cut-short model_gather.onnx
    output = _earlier_export(tmp_path / "onnx")
    (output / "model_gather.onnx").write_text("the earlier gather graph")
    earlier = _contents(output)
    real_export = export_tool.export_onnx

    def interrupted_in_the_gather_form(model, path, image, opset, form, batched):
        if form != "gather":
            return real_export(model, path, image, opset, form, batched)
        with open(path, "wb") as f:
            f.write(b"half a graph")
        raise KeyboardInterrupt

    argv = _argv(output, "--compare-msda-forms", "--benchmark", "160x192", "--warmup", "0", "--repeats", "1")
    with monkeypatch.context() as patched:
        patched.setattr(export_tool, "export_onnx", interrupted_in_the_gather_form)
        with pytest.raises(KeyboardInterrupt):
            export_tool.main(export_tool.parse_args(argv))
    assert _contents(output) == earlier  # and no temporary folder left

    # without --benchmark too (it exported nothing then), and replaced, not "removed"
    assert export_tool.run_reporting_errors(export_tool.cli, export_tool.parse_args(
        _argv(output, "--compare-msda-forms"))) == 0
    assert sorted(os.listdir(output)) == ["model.json", "model.onnx", "model_gather.onnx"]
    import onnx

    onnx.checker.check_model(str(output / "model_gather.onnx"))
    assert f"replaced the earlier export in {output}; removed its evaluation.json\n" in capfd.readouterr().err


def _staged_export(folder):
    stage = folder / ".export.x.partial"
    stage.mkdir()
    (stage / "model.onnx").write_text("the new graph")
    (stage / "model.json").write_text('{"new": 1}')
    return stage


def _outside(folder, stage):
    return {name: text for name, text in _contents(folder).items() if name != stage.name}


def test_a_ctrl_c_while_an_export_is_moved_in_takes_effect_once_the_moves_are_done_or_undone(tmp_path, monkeypatch):
    # a Ctrl-C just after a rename, before it was recorded, stranded that earlier file in the temporary folder (and
    # removed it with the folder); one while undoing stopped the undoing: DIR held parts of both exports
    import signal

    folder = _earlier_export(tmp_path / "onnx")
    stage = _staged_export(folder)
    real_replace = os.replace
    calls = []

    def replace_then_ctrl_c(source, target):
        calls.append(source)
        real_replace(source, target)
        if len(calls) == 1:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(os, "replace", replace_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        install_export(str(stage), str(folder))
    assert _outside(folder, stage) == {"model.onnx": "the new graph", "model.json": '{"new": 1}'}  # all moved

    folder = _earlier_export(tmp_path / "again")
    stage = _staged_export(folder)
    calls.clear()

    def new_model_json_fails_and_undoing_is_interrupted(source, target):
        calls.append(source)
        if str(source) == str(stage / "model.json"):
            raise PermissionError(13, "Permission denied", str(source), None, str(target))
        real_replace(source, target)
        if str(target) == str(stage / "model.onnx"):  # the undoing's first move back
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(os, "replace", new_model_json_fails_and_undoing_is_interrupted)
    with pytest.raises(KeyboardInterrupt):
        install_export(str(stage), str(folder))
    assert _outside(folder, stage) == EARLIER  # every move undone


def _files(folder):
    return {str(path.relative_to(folder)): path.read_text() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_an_interrupted_evaluation_leaves_the_earlier_one_and_a_finished_one_replaces_it_whole(
        export_tool, tiny_export, tmp_path, monkeypatch):
    # the evaluators wrote straight into DIR/evaluation/: interrupted, their new detections sat beside the earlier
    # evaluation.json (and a file of theirs could be cut short)
    from focus_detr.export.evaluation import AP_KEYS

    output = tmp_path / "scored"
    (output / "evaluation" / "pytorch").mkdir(parents=True)
    (output / "evaluation.json").write_text('{"earlier": 1}')
    (output / "evaluation" / "pytorch" / "coco_instances_results.json").write_text("earlier detections")
    (output / "evaluation" / "earlier_only.txt").write_text("earlier")
    earlier = _files(output)
    stopped = {"yes": True}

    def evaluation(cfg, model, predictor, folders):
        for runtime, folder in folders.items():
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, "coco_instances_results.json"), "w") as f:
                f.write(f"new {runtime} detections")
            if stopped["yes"]:
                raise KeyboardInterrupt
        return {"num_images": 9, **{runtime: dict.fromkeys(AP_KEYS, 1.0) for runtime in folders}}

    monkeypatch.setattr(export_tool, "_load_model", lambda *args: (torch.nn.Linear(1, 1), "random", None))
    monkeypatch.setattr(export_tool, "check_graph_fits_config", lambda *args: None)  # the tiny graph, a tree config
    monkeypatch.setattr(export_tool, "evaluate_onnx_and_pytorch", evaluation)
    argv = export_tool.parse_args(["--config-file", str(TREE_CONFIG), "--output", str(output), "--onnx",
                                   str(tiny_export / "model.onnx"), "--evaluate", "--threads", "1"])
    with pytest.raises(KeyboardInterrupt):
        export_tool.main(argv)
    assert _files(output) == earlier and sorted(os.listdir(output)) == ["evaluation", "evaluation.json"]

    stopped["yes"] = False
    export_tool.main(argv)
    assert sorted(_files(output)) == ["evaluation.json", "evaluation/onnx/coco_instances_results.json",
                                      "evaluation/pytorch/coco_instances_results.json"]
    assert (output / "evaluation" / "onnx" / "coco_instances_results.json").read_text() == "new onnx detections"
    assert json.loads((output / "evaluation.json").read_text())["onnx"]["AP"] == 1.0

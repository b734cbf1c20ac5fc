"""One export at a time per --output folder: the export holds the folder's lock (train_net.py's, of
``focus_detr.engine.output_lock``) for its whole run, so a second export, or a training, into it is refused in one
line naming the holder, before the model loads; a killed export's lock file blocks nothing."""
import os
import re
import signal
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, TINY_CONFIG

sys.path.insert(0, str(REPO_ROOT / "tests" / "engine"))  # cli_output

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from cli_output import error_lines  # noqa: E402
from focus_detr.engine import OutputDirInUseError, OutputDirLock, claim_output_dir  # noqa: E402
from focus_detr.engine.output_lock import LOCK_FILE_NAME  # noqa: E402

# another process holding a folder's lock as a running export does, until it is killed
HOLDER = ("import sys, time; from focus_detr.engine.output_lock import OutputDirLock; "
          "OutputDirLock(sys.argv[1], key='--output').acquire(); print('held', flush=True); time.sleep(600)")


def _argv(output):
    return ["--config-file", str(TINY_CONFIG), "--output", str(output), "--sample-size", "160", "192", "--threads", "1"]


def _in_use(output, pid):
    return re.compile(rf"^error: --output {re.escape(str(output))} is in use by another run \(pid {pid}, since "
                      r"[^)]+\): wait for it to end, or choose another --output$")


def _not_loaded(*args):
    raise AssertionError("the model was loaded")


def test_a_second_export_into_a_held_folder_is_refused_and_a_killed_one_blocks_nothing(export_tool, tmp_path,
                                                                                      monkeypatch, capfd):
    # two exports into one folder moved their files in turn: model.onnx of one beside model.json of the other
    output = tmp_path / "onnx"
    output.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(output)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with monkeypatch.context() as patched:
            patched.setattr(export_tool, "_load_model", _not_loaded)
            assert export_tool.run_reporting_errors(export_tool.cli, export_tool.parse_args(_argv(output))) == 2
        errors = error_lines(capfd.readouterr().err)
        assert len(errors) == 1 and _in_use(output, holder.pid).match(errors[0]), errors
        assert sorted(os.listdir(output)) == [LOCK_FILE_NAME]

        # killed -9: its lock file stays, its lock does not
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    finally:
        holder.kill()
        holder.wait()
    assert export_tool.run_reporting_errors(export_tool.cli, export_tool.parse_args(_argv(output))) == 0
    assert sorted(os.listdir(output)) == ["model.json", "model.onnx"]  # the lock file went at the end


def test_an_export_and_a_training_refuse_each_other_s_live_folder(export_tool, tmp_path, monkeypatch, capfd):
    # an export into a running training's output folder (or the reverse) is refused like a second training: their
    # files do not collide today, but the export's clean-up and replacement steps treat DIR as its own
    output = tmp_path / "run"
    output.mkdir()
    with OutputDirLock(str(output)):  # as train_net.py holds train.output_dir
        with monkeypatch.context() as patched:
            patched.setattr(export_tool, "_load_model", _not_loaded)
            assert export_tool.run_reporting_errors(export_tool.cli, export_tool.parse_args(_argv(output))) == 2
    errors = error_lines(capfd.readouterr().err)
    assert len(errors) == 1 and _in_use(output, os.getpid()).match(errors[0]), errors

    real_verify = export_tool.verify
    refusals = []

    def verify_while_a_training_starts(*args):
        with pytest.raises(OutputDirInUseError) as refused:
            with claim_output_dir(str(output)):  # train_net.py's claim
                pass
        refusals.append(str(refused.value))
        return real_verify(*args)

    monkeypatch.setattr(export_tool, "verify", verify_while_a_training_starts)
    assert export_tool.run_reporting_errors(export_tool.cli, export_tool.parse_args(_argv(output))) == 0
    assert len(refusals) == 1 and refusals[0].startswith(f"train.output_dir {output} is in use by another run (pid "
                                                         f"{os.getpid()}, since ")
    assert sorted(os.listdir(output)) == ["model.json", "model.onnx"]

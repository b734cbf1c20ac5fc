"""tools/sweep_keep_ratio.py and its output folder: each setting's detections kept apart, each image option counting
its own images, and a folder in use, holding a training run or an earlier sweep refused before any work."""
import fcntl
import os

import pytest
from tools_test_utils import TINY_TOY_CONFIG, load_script, toy_dataset  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def sweep():
    return load_script("tools/sweep_keep_ratio.py", "sweep_keep_ratio_tool")


def _argv(output, *extra):
    return ["--config-file", TINY_TOY_CONFIG, "--output", str(output), "--keep-ratios", "0.3", "0.5", "--no-dense",
            "--flop-images", "1", "--latency-warmup", "0", *extra]


def test_each_setting_keeps_its_own_detections_and_latency_cycles_its_own_images(sweep, toy_dataset, tmp_path,
                                                                                  monkeypatch):
    counts = {}
    real_sweep = sweep.sweep_keep_ratios

    def counting(cfg, model, settings, flop_inputs, latency_inputs, *args, **kwargs):
        counts.update(flop=len(flop_inputs), latency=len(latency_inputs))
        return real_sweep(cfg, model, settings, flop_inputs, latency_inputs, *args, **kwargs)

    monkeypatch.setattr(sweep, "sweep_keep_ratios", counting)
    sweep.main(sweep.parse_args(_argv(tmp_path, "--latency-images", "2")))
    assert counts == {"flop": 1, "latency": 2}  # was: latency over the first --flop-images (1) image
    # was: one coco_instances_results.json in --output, the last setting's, the others' overwritten
    for setting in ("keep_0.3", "keep_0.5"):
        assert (tmp_path / setting / "coco_instances_results.json").is_file(), setting
    assert not (tmp_path / "coco_instances_results.json").exists()


def test_an_output_holding_results_or_in_use_is_refused_before_any_work(sweep, toy_dataset, tmp_path, capfd):
    earlier_sweep = tmp_path / "earlier"
    earlier_sweep.mkdir()
    (earlier_sweep / "sweep.csv").write_text("an earlier sweep's rows\n")
    training = tmp_path / "training"
    training.mkdir()
    (training / "last_checkpoint").write_text("model_final.pth")
    in_use = tmp_path / "in_use"
    in_use.mkdir()
    interrupted = tmp_path / "interrupted"  # Ctrl-C after two settings: their folders, no sweep.csv yet
    for setting in ("keep_0.2", "keep_0.5"):
        (interrupted / setting).mkdir(parents=True)
        (interrupted / setting / "coco_instances_results.json").write_text("[]")
    expected = {
        interrupted: f"error: --output {interrupted} holds the results of an earlier sweep that did not finish "
                     "(keep_0.2, keep_0.5): choose another --output, or delete that folder to sweep into it again",
        earlier_sweep: f"error: --output {earlier_sweep} already holds a sweep (sweep.csv): choose another --output, "
                       "or delete that folder to sweep into it again",
        training: f"error: --output {training} holds a training run (last_checkpoint): the sweep would write its files "
                  "among that run's; choose another --output",
        in_use: f"error: --output {in_use} is in use by another run (pid {os.getpid()}",
    }
    with open(in_use / ".focus_detr.lock", "w") as held:  # as another sweep, or a training, holds it
        held.write(f'{{"pid": {os.getpid()}}}')
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for output, message in expected.items():
            before = sorted(os.listdir(output))
            assert sweep.run_reporting_errors(sweep.main, sweep.parse_args(_argv(output))) == 2
            errors = capfd.readouterr().err.strip().splitlines()
            assert len(errors) == 1 and errors[0].startswith(message), errors
            assert sorted(os.listdir(output)) == before  # nothing written, nothing overwritten
    assert (earlier_sweep / "sweep.csv").read_text() == "an earlier sweep's rows\n"

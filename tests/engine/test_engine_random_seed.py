"""train.seed=-1: the seed a run draws is written where running the run's config again finds it."""
import re

import torch
import yaml

from engine_test_utils import TOY_CONFIG, toy_dataset, train_net  # noqa: F401 (fixtures)


def _train(train_net, output_dir, *extra, resume=False):
    argv = ["--config-file", TOY_CONFIG] + (["--resume"] if resume else []) + [f"train.output_dir={output_dir}", *extra]
    train_net.main(train_net.default_argument_parser().parse_args(argv))


def _saved_seed(output_dir):
    return yaml.safe_load((output_dir / "config.yaml").read_text())["train"]["seed"]


def _weights(output_dir):
    return torch.load(output_dir / "model_final.pth", map_location="cpu", weights_only=True)["model"]


def test_a_drawn_seed_is_written_to_config_yaml_and_repeats_the_run(train_net, toy_dataset, tmp_path):
    # config.yaml said -1: running it again drew another seed and trained another model
    drawn = tmp_path / "drawn"
    _train(train_net, drawn, "train.seed=-1", "train.max_iter=3")
    seed = _saved_seed(drawn)
    assert isinstance(seed, int) and seed != -1
    assert f"train.seed is -1: drew {seed} (in config.yaml" in (drawn / "log.txt").read_text()

    again = tmp_path / "again"
    _train(train_net, again, f"train.seed={seed}", "train.max_iter=3")
    assert all(torch.equal(value, _weights(again)[key]) for key, value in _weights(drawn).items())


def test_a_resume_keeps_the_seed_the_run_started_with(train_net, toy_dataset, tmp_path):
    _train(train_net, tmp_path, "train.seed=-1", "train.max_iter=2")
    seed = _saved_seed(tmp_path)
    _train(train_net, tmp_path, "train.seed=-1", "train.max_iter=4", resume=True)
    assert _saved_seed(tmp_path) == seed
    log = (tmp_path / "log.txt").read_text()
    assert re.search(rf"train.seed is -1: keeping {seed}, the seed this run started with", log)


def test_a_given_seed_is_left_as_it_is(train_net, toy_dataset, tmp_path):
    _train(train_net, tmp_path, "train.seed=5", "train.max_iter=1")
    assert _saved_seed(tmp_path) == 5 and "train.seed is -1" not in (tmp_path / "log.txt").read_text()


def test_a_resume_of_a_run_whose_config_yaml_records_no_seed_keeps_minus_1(train_net, toy_dataset, tmp_path):
    # a run started before seeds were written: a drawn seed was written as if the run had started with it
    _train(train_net, tmp_path, "train.seed=-1", "train.max_iter=2")
    config = tmp_path / "config.yaml"
    config.write_text(re.sub(r"(?m)^  seed: \d+$", "  seed: -1", config.read_text()))
    _train(train_net, tmp_path, "train.seed=-1", "train.max_iter=4", resume=True)
    assert _saved_seed(tmp_path) == -1
    assert "the seed it started with is unknown, and config.yaml keeps -1" in (tmp_path / "log.txt").read_text()

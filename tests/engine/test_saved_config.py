"""A run's saved config.yaml is a config too: given back as --config-file it builds the same model as the file the
run came from, down to the random initial weights."""
import os

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from omegaconf import OmegaConf

from engine_test_utils import REPO_ROOT, TOY_CONFIG, toy_dataset, train_net  # noqa: F401 (fixtures)
from focus_detr.engine import load_config
from focus_detr.engine.config_files import keep_saved_config_order

TREES = os.path.join(REPO_ROOT, "configs", "focus_detr_r18_trees.py")


def _seeded_weights(cfg):
    torch.manual_seed(1)
    return instantiate(cfg.model).state_dict()


def test_a_saved_config_builds_the_same_initial_weights_as_its_source(tmp_path):
    # detectron2 saves config.yaml with sorted keys: ResNet's stages were built before its stem, and training from
    # config.yaml gave other weights (39 of 264 tensors) and another AP than the run it came from
    cfg = load_config(TREES)
    path = str(tmp_path / "config.yaml")
    LazyConfig.save(cfg, path)  # as detectron2's default_setup writes it
    sorted_copy = OmegaConf.to_container(LazyConfig.load(path), resolve=False)
    keep_saved_config_order(cfg, path)
    with open(path) as f:
        text = f.read()
    assert text.index("stem:") < text.index("stages:")
    assert "!!python/object:detectron2.layers.shape_spec.ShapeSpec" in text  # written back as it was, not built
    reordered = load_config(path)
    assert OmegaConf.to_container(reordered, resolve=False) == sorted_copy  # the same content
    expected, got = _seeded_weights(cfg), _seeded_weights(reordered)
    assert all(torch.equal(expected[key], got[key]) for key in expected)


def test_a_saved_config_that_is_not_yaml_is_left_as_it_is(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("model: [unclosed\n")
    keep_saved_config_order(load_config(TREES), str(path))
    assert path.read_text() == "model: [unclosed\n"


def _key_orders(node, prefix=""):
    orders = {}
    if isinstance(node, dict):
        orders[prefix] = list(node)
        for key, value in node.items():
            orders.update(_key_orders(value, f"{prefix}.{key}"))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            orders.update(_key_orders(value, f"{prefix}.{i}"))
    return orders


def test_train_net_saves_the_config_in_its_own_order(train_net, toy_dataset, tmp_path):
    assert train_net.cli(["--config-file", TOY_CONFIG, "--eval-only", f"train.output_dir={tmp_path}"]) == 0
    saved = OmegaConf.to_container(LazyConfig.load(str(tmp_path / "config.yaml")), resolve=False)
    source = OmegaConf.to_container(load_config(TOY_CONFIG, [f"train.output_dir={tmp_path}"]), resolve=False)
    assert _key_orders(saved) == _key_orders(source)


def test_a_saved_config_that_held_a_lambda_says_to_use_the_py_config(tmp_path):
    # detectron2 writes such a config.yaml as a readable copy and pickles the config beside it; given back, it was
    # "invalid YAML ... (cannot find module ...)" and the .pkl "neither a LazyConfig .py file nor a .yaml file"
    from focus_detr.engine import ConfigError

    cfg = load_config(TREES)
    cfg.optimizer.params.lr_factor_func = lambda name: 1.0
    path = str(tmp_path / "config.yaml")
    LazyConfig.save(cfg, path)
    keep_saved_config_order(cfg, path)
    with pytest.raises(ConfigError, match=r"config.yaml at line \d+: !!python/name:test_saved_config.<lambda> is not "
                                          r"a callable of .*: use the .py config it came from; detectron2 wrote it as "
                                          r"a readable copy only, beside config.yaml.pkl \(the config held what YAML "
                                          r"cannot, e.g. a lambda\)$") as error:
        load_config(path)
    assert str(error.value).count("use the .py config") == 1  # it was said twice
    with pytest.raises(ConfigError, match=r"config.yaml.pkl is neither a LazyConfig .py file nor a .yaml file "
                                          r"\(detectron2's pickled copy .*: not loaded, unpickling runs code"):
        load_config(path + ".pkl")

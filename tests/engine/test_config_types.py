"""The values a config gives typed constructor arguments: an integer, a number, True/False, None only where the
argument takes it; from config files as from overrides, one line naming the key."""
import os
from typing import Optional, Sequence, Tuple

import pytest
from detectron2.config import LazyCall as L
from omegaconf import OmegaConf

from focus_detr.engine.config import ConfigError, apply_overrides, load_config
from focus_detr.engine.config_types import check_argument_types
from engine_test_utils import REPO_ROOT


class Part:
    def __init__(self, count: int = 3, share: float = 0.5, enabled: bool = True, limit: Optional[int] = None,
                 name: str = "x", inner=None, size: "int | None" = 1, strides: Sequence[int] = (8, 16),
                 means: Tuple[float, ...] = (1.0,), ranges: Sequence[Sequence[float]] = ((0.0, 1.0),)):
        pass


def _config(**part):
    return OmegaConf.create({"model": L(Part)(**part)})


@pytest.mark.parametrize("part", [
    dict(count=3, share=1, enabled=False, limit=None, name="y"),  # an integer is a number too
    dict(limit=7),
    dict(size=None),  # int | None takes None, whatever the default
    dict(strides=[4, 8], means=[1, 2.5], ranges=[[0, 1]]),  # lists of lists are left to the constructor
    dict(inner=L(Part)(count=2)),  # a nested part is checked in its own right
    dict(count="${..other}"),  # an interpolation is checked as it resolves
])
def test_values_of_the_annotated_kinds_pass(part):
    cfg = _config(**part)
    cfg.other = 4
    check_argument_types(cfg)


@pytest.mark.parametrize("part, message", [
    (dict(count=300 / 3), r"config key model.count must be an integer, got 100.0 \(a division in a config file gives "
                          r"a float: use //"),
    (dict(count=None), r"config key model.count must be an integer, got None \(it has no 'none' setting\)"),
    (dict(count=True), r"config key model.count must be an integer, got True"),
    (dict(share="half"), r"config key model.share must be a number, got 'half'"),
    (dict(enabled=1), r"config key model.enabled must be True or False, got 1"),
    (dict(inner=L(Part)(limit=2.5)), r"config key model.inner.limit must be an integer, got 2.5"),
    (dict(size=1.5), r"config key model.size must be an integer, got 1.5"),
    (dict(strides=None), r"config key model.strides must be a list of integers, got None \(it has no 'none'"),
    (dict(strides=[8.5, 16]), r"config key model.strides must be a list of integers, got \[8.5, 16\]"),
    (dict(means=4.0), r"config key model.means must be a list of numbers, got 4.0"),
])
def test_values_of_other_kinds_are_named(part, message):
    with pytest.raises(ConfigError, match=message):
        check_argument_types(_config(**part))


def test_a_tree_config_with_a_float_query_count_is_refused_at_load(tmp_path):
    # reached the model as torch.empty(100.0, ...): "argument 'size' must be tuple of ints", a traceback
    config = tmp_path / "queries.py"
    config.write_text(
        "from detectron2.config import LazyConfig\n"
        f"globals().update(LazyConfig.load({_trees_config()!r}))\n"
        "model.transformer.num_queries = 300 / 3\n"
    )
    with pytest.raises(ConfigError, match="config key model.transformer.num_queries must be an integer, got 100.0"):
        load_config(str(config), [])


def test_null_overrides_of_typed_settings_are_refused():
    cfg = load_config(_trees_config(), [])
    with pytest.raises(ConfigError, match="config key model.transformer.encoder.ffn_dropout must be a number, got None"):
        apply_overrides(cfg, ["model.transformer.encoder.ffn_dropout=null"])


def _trees_config():
    return os.path.join(REPO_ROOT, "configs", "focus_detr_r18_trees.py")

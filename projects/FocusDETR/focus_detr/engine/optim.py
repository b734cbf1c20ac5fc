"""The optimiser of a training run, its settings checked (:func:`build_optimizer`), and helpers that configs refer to
(kept as classes so a config stays serialisable)."""
import inspect
import math

from detectron2.config import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from .cli import raised_in_this_package
from .config import ConfigError
from .config_types import is_number, located_target

__all__ = ["LrFactorByName", "build_optimizer", "check_lr_factor", "optimizer_settings", "restore_optimizer_settings"]


class LrFactorByName:
    """``lr_factor_func`` for ``get_default_optimizer_params``: ``factor`` for parameters whose full name contains
    ``substring`` (e.g. "backbone" -> backbone lr x0.1), 1.0 for the rest."""

    def __init__(self, substring="backbone", factor=0.1):
        if not is_number(factor) or not (math.isfinite(factor) and factor >= 0):  # an infinite factor made every weight it scales NaN
            raise ValueError(f"factor must be a finite number >= 0, got {factor!r}")
        self.substring = substring
        self.factor = factor

    def __call__(self, parameter_name):
        return self.factor if self.substring in parameter_name else 1.0

    def __repr__(self):
        return f"LrFactorByName(substring={self.substring!r}, factor={self.factor})"


def _default_betas(node):
    """How many ``betas`` the optimizer class of ``node`` takes by default (None: it has no such default)."""
    try:
        default = inspect.signature(located_target(node.get("_target_", None))).parameters["betas"].default
    except (KeyError, TypeError, ValueError):  # no betas argument, or no class to inspect
        return None
    return len(default) if isinstance(default, (list, tuple)) else None


def build_optimizer(cfg, model):
    """``instantiate(cfg.optimizer)`` for ``model`` (set as ``optimizer.params.model``); a setting torch refuses, or
    one that would train nothing or the wrong parameters, is a ConfigError (one line)."""
    cfg.optimizer.params.model = model
    betas = cfg.optimizer.get("betas", None)
    # Adam's: torch indexes the first two (a third was dropped without a word, one gave an omegaconf IndexError);
    # optimizers of three (timm's Adan) are not compared
    if isinstance(betas, (list, tuple, ListConfig)) and len(betas) != 2 and _default_betas(cfg.optimizer) == 2:
        raise ConfigError(f"optimizer.betas must be two numbers (the averaging rates of the gradient and of its "
                          f"square, e.g. [0.9,0.999]), got {list(betas)}")
    params = cfg.optimizer.get("params", None)
    for name in ("weight_decay", "weight_decay_norm", "weight_decay_bias"):
        # the parameter groups' own decay, which torch does not check (a negative one grew those weights)
        value = params.get(name, None) if isinstance(params, DictConfig) else None
        if is_number(value) and not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"optimizer.params.{name} must be a finite number >= 0 (0: no weight decay), got {value}")
    lr = cfg.optimizer.get("lr", None)
    if is_number(lr) and math.isinf(lr):  # torch takes it, and the first step makes every weight NaN
        raise ConfigError(f"optimizer.lr must be a finite number, got {lr}")
    factor_key = "optimizer.params.lr_factor_func"
    factor_node = OmegaConf.select(cfg, factor_key, default=None)
    try:
        lr_factor_func = None if factor_node is None else instantiate(factor_node)
    except ValueError as error:  # LrFactorByName's, which names no config key
        raise ConfigError(f"{factor_key}: {error}") from None
    try:
        optimizer = instantiate(cfg.optimizer)
    except (IndexError, TypeError, ValueError) as error:
        # torch's checks of its settings ("Invalid learning rate: nan") name no config key
        if not isinstance(error, ValueError) and raised_in_this_package(error):
            raise  # a fault of this package's code, not a setting
        raise ConfigError(f"the config's optimizer settings (optimizer.*) are invalid: {error}") from None
    if all(group["lr"] == 0 for group in optimizer.param_groups):  # torch allows it; the run trains nothing
        raise ConfigError("optimizer.lr is 0: the training would change no weight (to evaluate the initial weights, "
                          "use --eval-only)")
    if lr_factor_func is not None:
        check_lr_factor(lr_factor_func, model, factor_key)
    return optimizer


def check_lr_factor(lr_factor_func, model, key="optimizer.params.lr_factor_func"):
    """Raises ConfigError when ``lr_factor_func`` (an :class:`LrFactorByName`) changes the rate of parameters whose
    name holds its substring and no parameter of ``model`` has such a name: a typo ("Backbone") trained the
    backbone at the full rate without a word."""
    if not isinstance(lr_factor_func, LrFactorByName) or lr_factor_func.factor == 1.0:
        return
    names = [name for name, _ in model.named_parameters()]
    if names and not any(lr_factor_func.substring in name for name in names):
        raise ConfigError(
            f"{key}.substring {lr_factor_func.substring!r} is in no parameter's name (e.g. {names[0]!r}), so its "
            f"factor {lr_factor_func.factor} applies to nothing"
        )


def optimizer_settings(optimizer):
    """Per parameter group, its hyperparameters as configured (``lr`` the base learning rate), without the
    parameters: take it before a checkpoint is loaded, for :func:`restore_optimizer_settings`."""
    return [{key: value for key, value in group.items() if key != "params"} for group in optimizer.param_groups]


def restore_optimizer_settings(optimizer, settings):
    """Puts the configured hyperparameters ``settings`` (from :func:`optimizer_settings`) back into ``optimizer``
    after a checkpoint loaded its state, which replaces every group's hyperparameters with the saved ones:
    resuming with ``optimizer.lr=...`` or ``optimizer.weight_decay=...`` would otherwise keep the old values without
    a word. The base learning rate goes to ``initial_lr``, which the LR schedule multiplies. Returns the changes,
    ``"name old -> new"`` (groups whose values differ, e.g. a backbone's lower rate, add ``, old -> new``); an
    unchanged config changes nothing."""
    changes = {}
    for group, configured in zip(optimizer.param_groups, settings):
        for key, value in configured.items():
            target = "initial_lr" if key == "lr" else key
            saved = group.get(target, group.get("lr") if key == "lr" else None)
            if _comparable(saved) == _comparable(value):
                continue
            group[target] = value
            change = f"{saved} -> {value}"
            if change not in changes.setdefault(key, []):
                changes[key].append(change)
    return [f"{key} {', '.join(pairs)}" for key, pairs in changes.items()]


def _comparable(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value

"""Optimiser helpers that configs refer to (kept as classes so a config stays serialisable)."""

__all__ = ["LrFactorByName"]


class LrFactorByName:
    """``lr_factor_func`` for ``get_default_optimizer_params``: ``factor`` for parameters whose full name contains
    ``substring`` (e.g. "backbone" -> backbone lr x0.1), 1.0 for the rest."""

    def __init__(self, substring="backbone", factor=0.1):
        if factor < 0:
            raise ValueError(f"factor must be >= 0, got {factor}")
        self.substring = substring
        self.factor = factor

    def __call__(self, parameter_name):
        return self.factor if self.substring in parameter_name else 1.0

    def __repr__(self):
        return f"LrFactorByName(substring={self.substring!r}, factor={self.factor})"

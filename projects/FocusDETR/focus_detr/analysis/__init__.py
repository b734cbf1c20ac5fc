"""Measuring models: FLOPs per module (with the project's fvcore handles), keep-ratio overrides and sweeps, benchmark
timing, token-selection pictures, training curves, a trivial baseline detector, and the comparison with official
outputs (``parity``, ``forced_decisions``)."""
from .flop_handles import MSDA_FLOP_HANDLES, flop_count_analysis
from .flops import FlopReport, count_flops, executed_multiply_adds
from .keep_ratios import (
    KeepRatioSetting,
    dense_keep_ratios,
    foreground_selector_of,
    interleaved_latencies,
    keep_ratio_settings,
    keep_ratios_applied,
)

__all__ = [
    "FlopReport",
    "KeepRatioSetting",
    "MSDA_FLOP_HANDLES",
    "count_flops",
    "dense_keep_ratios",
    "executed_multiply_adds",
    "flop_count_analysis",
    "foreground_selector_of",
    "interleaved_latencies",
    "keep_ratio_settings",
    "keep_ratios_applied",
]

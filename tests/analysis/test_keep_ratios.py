"""Keep-ratio sweep settings (sorted by keep ratio, checked up front) and their latency timed interleaved: each
round runs every setting once, in turn, on the same image."""
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from focus_detr.analysis.keep_ratios import KeepRatioSetting, interleaved_latencies, keep_ratio_settings


class _Selector:
    """What the sweep uses of a ForegroundTokenSelector: its ratios and set_keep_ratios (checked like the real one)."""

    def __init__(self):
        self.keep_ratio, self.cascade_keep_ratios = 0.5, [1.0, 0.8]

    def set_keep_ratios(self, keep_ratio, cascade_keep_ratios):
        if not 0 < keep_ratio <= 1 or len(cascade_keep_ratios) != 2:
            raise ValueError(f"bad keep ratios {keep_ratio} {cascade_keep_ratios}")
        self.keep_ratio, self.cascade_keep_ratios = keep_ratio, list(cascade_keep_ratios)


class _RecordingModel(nn.Module):
    """Records (keep ratio, image number) at each call; with a ``clock``, a call takes keep ratio x the machine's
    current slowness (1 for the first call of each round ..., doubling each round: a machine getting busier)."""

    def __init__(self, clock=None):
        super().__init__()
        self.transformer = SimpleNamespace(foreground_selector=_Selector())
        self.calls = []
        self.clock = clock

    def forward(self, batch):
        (item,) = batch
        keep_ratio = self.transformer.foreground_selector.keep_ratio
        self.calls.append((keep_ratio, int(item["image"][0, 0, 0])))
        if self.clock is not None:
            self.clock["now"] += keep_ratio * 2.0 ** self.clock["round"]


def test_settings_are_sorted_by_keep_ratio_with_dense_last():
    model = _RecordingModel()
    settings = keep_ratio_settings(model, [0.7, 0.1, 1.0, 0.3])
    assert [s.name for s in settings] == ["keep 0.1", "keep 0.3", "keep 0.7", "keep 1", "dense"]
    assert settings[0] == KeepRatioSetting("keep 0.1", 0.1, (1.0, 0.8))
    assert settings[-1].cascade_keep_ratios == (1.0, 1.0)
    assert [s.name for s in keep_ratio_settings(model, [0.5, 0.2], cascade=[0.6, 0.4], dense=False)] == ["keep 0.2", "keep 0.5"]
    assert model.transformer.foreground_selector.keep_ratio == 0.5  # checking them left the model as it was


@pytest.mark.parametrize("keep_ratios, cascade, message", [
    ([0.3, 0.3], None, "'keep 0.3' and 'keep 0.3' are the same setting"),
    ([1.0], [1.0, 1.0], "'dense' and 'keep 1' are the same setting"),
    # one row, one folder and one latency for both, the second's results in place of the first's
    ([0.3, 0.3000001], None, "keep ratios 0.3 and 0.3000001 are both 'keep 0.3': give ratios that differ within 6 "
                             "significant digits"),
    ([1.5], None, "bad keep ratios 1.5"),
    ([0.3], [0.5], "bad keep ratios"),
])
def test_bad_settings_are_refused_before_anything_runs(keep_ratios, cascade, message):
    model = _RecordingModel()
    with pytest.raises(ValueError, match=message):
        keep_ratio_settings(model, keep_ratios, cascade)
    assert model.calls == []


def test_latency_rounds_run_every_setting_in_turn_on_the_same_image():
    model = _RecordingModel()
    settings = keep_ratio_settings(model, [0.3, 0.1])
    inputs = [{"image": torch.full((3, 4, 4), n, dtype=torch.uint8)} for n in range(3)]
    seconds = interleaved_latencies(model, settings, inputs, "cpu", warmup=1, repeats=5)
    assert list(seconds) == ["keep 0.1", "keep 0.3", "dense"] and all(len(s) == 5 for s in seconds.values())
    rounds = [model.calls[i:i + 3] for i in range(0, len(model.calls), 3)]
    assert len(rounds) == 6  # one warm-up round, then five timed, each starting one setting later
    in_turn = [0.1, 0.3, 1.0]
    for number, round_calls in enumerate(rounds):
        first = max(number - 1, 0) % 3
        assert round_calls == [(ratio, number % 3) for ratio in in_turn[first:] + in_turn[:first]]
    assert model.transformer.foreground_selector.keep_ratio == 0.5


def test_each_setting_is_timed_over_its_own_calls_under_a_drifting_load(monkeypatch):
    from focus_detr.analysis import timing

    clock = {"now": 0.0, "round": -1}
    model = _RecordingModel(clock)
    settings = keep_ratio_settings(model, [0.5, 0.25])
    inputs = [{"image": torch.zeros((3, 4, 4), dtype=torch.uint8)}]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock["now"])
    original = settings[-1].applied

    calls = {"count": 0}

    def load_rises_each_round(self, model):  # every len(settings) calls make a round
        clock["round"] = calls["count"] // len(settings)
        calls["count"] += 1
        return original.__func__(self, model)

    monkeypatch.setattr(type(settings[0]), "applied", load_rises_each_round)
    seconds = interleaved_latencies(model, settings, inputs, "cpu", warmup=0, repeats=5)
    for setting in settings:
        assert seconds[setting.name] == [setting.keep_ratio * 2.0 ** r for r in range(5)]
    # the per-round ratios are the settings' true ratios whatever the load did
    assert timing.median_ratio(seconds["keep 0.25"], seconds["dense"]) == 0.25

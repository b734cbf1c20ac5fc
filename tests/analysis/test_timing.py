"""Benchmark timing helpers: interleaved rounds, per-round ratios, the yardstick, resettable CPU peak memory, the
data loader's delivery."""
import itertools
import os

import pytest
import torch

from focus_detr.analysis.timing import (
    median_ratio,
    peak_memory_mib,
    reset_peak_memory,
    resnet50_yardstick,
    batch_sizes_cycle,
    time_data_loader,
    time_interleaved,
)


def test_interleaved_calls_alternate_and_are_all_timed():
    calls = []
    functions = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    seconds = time_interleaved(functions, "cpu", 1, 4)
    # one warm-up round, then four timed rounds, each starting one function later: none always follows the same one
    assert "".join(calls) == "abc" + "abc" + "bca" + "cab" + "abc"
    assert {name: len(times) for name, times in seconds.items()} == {"a": 4, "b": 4, "c": 4}
    with pytest.raises(ValueError, match="repeats"):
        time_interleaved({"a": lambda: None}, "cpu", 0, 0)


def test_median_ratio_is_taken_per_round():
    # a machine slowing down 10x in round 3 hits both runs: the per-round ratio stays 2
    assert median_ratio([2.0, 4.0, 40.0], [1.0, 2.0, 20.0]) == 2.0
    assert median_ratio([1.0, 3.0, 100.0], [1.0, 1.0, 1.0]) == 3.0


def test_yardstick_runs_resnet50_cycling_through_the_requested_sizes(monkeypatch):
    # in step with a model cycling through dataset images of several sizes; it ran the first size every round
    import torchvision

    seen = []
    network = torchvision.models.resnet50(weights=None)
    network.register_forward_hook(lambda module, inputs, output: seen.append((tuple(inputs[0].shape), module.training)))
    monkeypatch.setattr(torchvision.models, "resnet50", lambda weights=None: network)
    yardstick = resnet50_yardstick([(64, 96), (32, 48)], "cpu")
    for _ in range(3):
        yardstick()
    yardstick.restart()
    yardstick()
    assert seen == [((1, 3, 64, 96), False), ((1, 3, 32, 48), False), ((1, 3, 64, 96), False), ((1, 3, 64, 96), False)]


def test_the_yardstick_sizes_follow_the_first_image_of_each_batch_over_a_whole_cycle():
    inputs = [{"image": torch.zeros(3, height, 10)} for height in (1, 2, 3, 4)]
    assert batch_sizes_cycle(inputs) == [(1, 10), (2, 10), (3, 10), (4, 10)]
    assert batch_sizes_cycle(inputs, batch_size=3) == [(1, 10), (4, 10), (3, 10), (2, 10)]  # calls 123, 412, 341, 234
    assert batch_sizes_cycle(inputs, batch_size=2) == [(1, 10), (3, 10)]


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc/self/clear_refs")
def test_cpu_peak_memory_resets_to_the_current_size():
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    del block
    before = peak_memory_mib("cpu")
    reset_peak_memory("cpu")
    assert peak_memory_mib("cpu") < before - 32


def test_time_data_loader_skips_the_warmup_batches_and_counts_each_batchs_images():
    delivered = []

    def loader():
        for size in itertools.count(1):
            delivered.append(size)
            yield [{}] * size

    seconds, images = time_data_loader(loader(), warmup=2, repeats=3)
    assert images == [3, 4, 5] and len(seconds) == 3 and all(s >= 0 for s in seconds)
    assert delivered == [1, 2, 3, 4, 5]  # nothing read beyond what was timed

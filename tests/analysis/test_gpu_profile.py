"""Reading a profiler trace into per-call GPU figures: busy time, launches, copies, synchronisations, operators."""
import pytest
import torch

from focus_detr.analysis.gpu_profile import CALL_ANNOTATION, merged_length, profile_summary, trace_summary



def _event(cat, name, ts, dur):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "pid": 0, "tid": 0}


def _two_calls():
    """Two profiled calls (0-100 us and 200-300 us) with a harness synchronisation between them, as
    :func:`profile_calls` records them."""
    events = [{"ph": "M", "name": "process_name", "args": {"name": "python"}}]
    for base in (0, 200):
        events += [
            _event("user_annotation", CALL_ANNOTATION, base, 100),
            _event("gpu_user_annotation", CALL_ANNOTATION, base + 5, 120),  # the device's copy of the range
            _event("cpu_op", "aten::linear", base + 1, 30),
            _event("cpu_op", "aten::addmm", base + 2, 20),  # nested in linear: counted too
            _event("cpu_op", "aten::_to_copy", base + 40, 5),
            _event("cuda_runtime", "cudaMemcpyAsync", base + 10, 2),
            _event("cuda_runtime", "cudaLaunchKernel", base + 20, 3),
            _event("cuda_runtime", "cudaLaunchKernel", base + 30, 3),
            _event("cuda_driver", "cuLaunchKernel", base + 35, 3),
            _event("cuda_runtime", "cudaStreamSynchronize", base + 50, 20),  # an .item()
            _event("cuda_driver", "cuStreamSynchronize", base + 51, 18),  # what the runtime call above made
            _event("gpu_memcpy", "Memcpy HtoD (Pageable -> Device)", base + 12, 4),
            # two kernels overlapping by 10 us, a third one running after the call's host side returned
            _event("kernel", "gemm", base + 25, 30),
            _event("kernel", "relu", base + 45, 20),
            _event("kernel", "gemm", base + 90, 30),
            _event("gpu_memcpy", "Memcpy DtoH (Device -> Pageable)", base + 66, 2),
            _event("gpu_memset", "Memset (Device)", base + 125, 1),
        ]
        events.append(_event("cuda_runtime", "cudaDeviceSynchronize", base + 130, 10))  # harness, outside the call
    return events


def test_merged_length_counts_overlaps_once():
    assert merged_length([]) == 0
    assert merged_length([(0, 10), (5, 20), (30, 40), (40, 41)]) == 31
    assert merged_length([(30, 40), (0, 100)]) == 100


def test_trace_summary_counts_per_call_inside_the_calls_only():
    s = trace_summary(_two_calls(), calls=2)
    assert s["kernels"] == 3 and s["launches"] == 3
    assert s["copies"] == {"DtoH": 1, "HtoD": 1} and s["memsets"] == 1
    # the harness's cudaDeviceSynchronize after each call is not the model's
    assert s["syncs"] == 1 and s["sync_calls"] == {"cudaStreamSynchronize": 1}
    assert s["operators"] == 3 and s["casts"] == 1
    assert s["kernel_ms"] == pytest.approx(0.080)
    # union per call: memcpy 12-16, kernels 25-65 and 90-120, memcpy 66-68, memset 125-126 -> 4 + 40 + 30 + 2 + 1
    assert s["device_active_ms"] == pytest.approx(0.077)
    assert s["top_kernels"][0] == {"name": "gemm", "launches": 2, "ms": pytest.approx(0.060)}


def test_trace_summary_refuses_a_trace_with_other_calls():
    with pytest.raises(ValueError, match="2 'focus_detr.profiled_call' annotations, expected 3"):
        trace_summary(_two_calls(), calls=3)


def test_profile_summary_on_the_cpu_counts_the_operators_of_each_call():
    x, y = torch.ones(4), torch.full((4,), 2.0)

    def three_ops():
        x.add(y).mul(y).sub(y)

    summary = profile_summary(three_ops, "cpu", warmup=1, repeats=2, profiled=3)
    assert summary["calls"] == 3 and summary["operators"] == 3
    assert summary["kernels"] == 0 and summary["syncs"] == 0 and summary["busy_fraction"] is None
    assert summary["wall_ms"] > 0 and summary["profiled_wall_ms"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("read_back", [False, True])
def test_profile_summary_on_cuda_sees_kernels_and_each_read_back(read_back):
    x = torch.ones(1024, device="cuda")

    def call():
        y = x.mul(2).add(1)
        if read_back:
            y.sum().item()

    summary = profile_summary(call, "cuda", warmup=2, repeats=3, profiled=3)
    assert summary["kernels"] >= 2 and summary["launches"] >= 2
    assert summary["syncs"] == (1 if read_back else 0)
    assert summary["copies"].get("DtoH", 0) == (1 if read_back else 0)
    assert 0 < summary["busy_fraction"] <= 1.5

"""The sweep's plot (latency as a ratio to dense when there is a dense point, else in ms) and its refusal of a
latency median over fewer than 5 rounds."""
import pytest
from PIL import Image

from focus_detr.analysis.keep_ratio_sweep import MIN_LATENCY_REPEATS, sweep_keep_ratios, write_sweep_plot


def _rows(with_dense):
    rows = [{"setting": f"keep {r:g}", "keep_ratio": r, "AP": 4 + r, "gflops": 2 + r, "latency_ms": 200 + 100 * r,
             "latency_vs_dense": 0.5 + r / 2 if with_dense else "", "latency_repeats": 5} for r in (0.1, 0.3, 0.5)]
    if with_dense:
        rows.append({"setting": "dense", "keep_ratio": 1.0, "AP": 3.8, "gflops": 4.1, "latency_ms": 400.0,
                     "latency_vs_dense": 1.0, "latency_repeats": 5})
    return rows


@pytest.mark.parametrize("with_dense", [True, False])
def test_plot_is_written(tmp_path, with_dense):
    path = tmp_path / "sweep.png"
    write_sweep_plot(_rows(with_dense), str(path), title="test")
    with Image.open(path) as picture:
        assert picture.format == "PNG" and picture.size[0] > 1000 and picture.size[1] > 400
    assert 20_000 < path.stat().st_size < 1_000_000


def test_latency_needs_at_least_five_rounds():
    with pytest.raises(ValueError, match=f"at least {MIN_LATENCY_REPEATS} interleaved rounds"):
        sweep_keep_ratios(cfg=None, model=None, settings=[], flop_inputs=[], latency_inputs=[{}], device="cpu",
                          repeats=MIN_LATENCY_REPEATS - 1)

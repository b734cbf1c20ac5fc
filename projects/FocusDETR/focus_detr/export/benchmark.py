"""onnxruntime timed against PyTorch on the CPU, interleaved in one process (``tools/export_model.py --benchmark``)."""
import statistics
from typing import Dict, List, Sequence, Tuple

import torch

from ..analysis.inputs import synthetic_inputs
from ..analysis.timing import median_ratio, time_interleaved
from .predictor import OnnxPredictor

__all__ = ["time_batches", "time_graphs"]


def time_graphs(model, predictors: Dict[str, OnnxPredictor], sizes: Sequence[Tuple[int, int]], warmup: int,
                repeats: int) -> List[Dict]:
    """Per size, the median latency (ms) of the PyTorch ``model`` and of each onnxruntime predictor (name ->
    predictor; the one named "onnxruntime" is the exported graph), all timed in turn on the same image, and the
    graph's speed-up over PyTorch."""
    rows = []
    for height, width in sizes:
        item = synthetic_inputs(height, width)[0]
        runs = {"pytorch": lambda: model([item])}
        runs.update({name: (lambda p=p: p(item["image"])) for name, p in predictors.items()})
        with torch.no_grad():
            seconds = time_interleaved(runs, "cpu", warmup, repeats)
        medians = {name: 1000 * statistics.median(s) for name, s in seconds.items()}
        rows.append({"size": f"{height}x{width}", "repeats": repeats, **{f"{k}_ms": v for k, v in medians.items()},
                     "speedup": medians["pytorch"] / medians["onnxruntime"],
                     "runs_ms": {k: [round(1000 * t, 1) for t in v] for k, v in seconds.items()}})
    return rows


def time_batches(model, predictor: OnnxPredictor, sizes: Sequence[Tuple[int, int]], batch_size: int, warmup: int,
                 repeats: int) -> List[Dict]:
    """Per size, the median time per image (ms) of ``batch_size`` images run one by one and as one batch, by PyTorch
    and by a batched graph, the four timed in turn; and each runtime's batch time over its one-by-one time (median of
    the rounds' ratios)."""
    rows = []
    for height, width in sizes:
        items = synthetic_inputs(height, width, count=batch_size)
        images = [item["image"] for item in items]
        runs = {
            "pytorch_one_by_one": lambda: [model([item]) for item in items],
            "pytorch_batched": lambda: model(items),
            "onnxruntime_one_by_one": lambda: [predictor(image) for image in images],
            "onnxruntime_batched": lambda: predictor.predict_batch(images),
        }
        with torch.no_grad():
            seconds = time_interleaved(runs, "cpu", warmup, repeats)
        row = {"size": f"{height}x{width}", "batch_size": batch_size, "repeats": repeats}
        row.update({f"{name}_ms_per_image": 1000 * statistics.median(s) / batch_size for name, s in seconds.items()})
        for runtime in ("pytorch", "onnxruntime"):
            row[f"{runtime}_batched_over_one_by_one"] = median_ratio(
                seconds[f"{runtime}_batched"], seconds[f"{runtime}_one_by_one"]
            )
        rows.append(row)
    return rows

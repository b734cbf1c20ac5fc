"""Checking an exported graph against the PyTorch model it came from (``tools/export_model.py``)."""
import torch

from ..analysis.forced_decisions import ForcedDecisions
from ..analysis.parity import Report
from .compare import match_detections
from .ranking import QUERY_RANKING_OUTPUT, ForcedQueryRanking, graph_decisions

__all__ = ["TOP_DETECTIONS", "check_batch_sizes", "compare_with_pytorch", "inputs_label"]

TOP_DETECTIONS = 100


def check_batch_sizes(size):
    """The sizes of the batch a batched graph is checked on: ``size`` (H, W), one of half its sides, and ``size``
    again: three images, since the graph is traced on two, and a batch size it froze would still fit two. The small
    one is padded, and with a quarter of the area it has fewer valid tokens than the batch's largest foreground
    budget, so it keeps padding tokens too, all of one score (the check takes the graph's choice among them, an exact
    tie, by the tie rule)."""
    return [tuple(size), tuple(max(1, length // 2) for length in size), tuple(size)]


def _run_graph(predictor, items):
    """The graph's outputs and Instances for ``items`` (one image, or a batched graph's batch)."""
    images, image_sizes = [item["image"] for item in items], [tuple(item["image"].shape[1:]) for item in items]
    output_sizes = [(item["height"], item["width"]) for item in items]
    if len(items) == 1:
        outputs = predictor.run(images[0])
        return outputs, [predictor.instances(outputs, image_sizes[0], *output_sizes[0])]
    outputs = predictor.run_batch(images)
    return outputs, predictor.batch_instances(outputs, image_sizes, output_sizes)


def _token_counts(outputs, references):
    """Per image, the graph's and PyTorch's tokens per encoder layer (and, for one image, fine-grained tokens per
    layer). In a batch each image updates the batch's count up to its own foreground budget."""
    graph, pytorch = [], []
    for i, reference in enumerate(references):
        selection = reference["token_selection"]
        counts = outputs["encoder_token_counts"].tolist()
        if "focus_token_nums" in outputs:
            counts = [min(count, int(outputs["focus_token_nums"][i])) for count in counts]
        graph.append(counts)
        pytorch.append([len(inds) for inds in selection["foreground_inds"]])
    if len(references) == 1:  # in a batch, an image's fine-grained tokens are those among its own kept tokens
        graph.append(outputs["fine_grained_token_counts"].tolist())
        pytorch.append([len(inds) for inds in references[0]["token_selection"]["fine_grained_inds"]])
    return graph, pytorch


def inputs_label(items):
    sizes = ", ".join(f"{item['height']}x{item['width']}" for item in items)
    return sizes if len(items) == 1 else f"batch of {len(items)} ({sizes})"


def _decisions_text(report: Report, forced: ForcedQueryRanking, num_ranks: int) -> str:
    """The graph's decisions that are not PyTorch's, as the log line shows them: token sets that differ only among
    exactly equal scores (padding tokens, flat areas) counted, the others named with their score gaps."""
    differing, exact_ties = [], 0
    for name, value, tolerance, ok in report.rows:
        if not tolerance.startswith("gap <= "):
            if not ok:
                differing.append(f"{name} {value}, not {tolerance}")
        elif str(value).endswith("gap 0.0e+00"):
            exact_ties += not str(value).startswith("0 differ")
        elif not str(value).startswith("0 differ"):
            differing.append(f"{name} {value} (ties up to {tolerance.split()[-1]})")
    if exact_ties:
        differing.insert(0, f"{exact_ties} token sets differ among equal scores only")
    if forced.differ:
        differing.append(f"query ranks {forced.differ} of {num_ranks} differ, gap {forced.gap:.1e} (ties up to "
                         f"{forced.tolerance:.1e})")
    return "; ".join(differing) or "none differ"


def compare_with_pytorch(model, predictor, items):
    """PyTorch vs onnxruntime (``predictor`` with ``decisions``) on input dicts: one, or a batch for a batched graph.
    Returns a line for the log and whether they agree: the top detections of every image matched and the same token
    counts; or, when some detections differ, the graph's ranking decisions (token sets and query ranking) are
    PyTorch's up to ties and PyTorch run with them gives the graph's detections. None instead of a verdict where
    PyTorch refuses the input (e.g. too small for the model): nothing to compare the graph with."""
    label = inputs_label(items)
    try:
        outputs, ours = _run_graph(predictor, items)
    except ValueError as error:  # the graph does not run at this size (a backbone that froze its sizes when traced)
        return f"{label}: {error} MISMATCH", False
    try:
        with torch.no_grad():
            references = model.forward_inference(items, return_token_selection=True)
    except ValueError as error:  # an input the model refuses (e.g. too small): nothing to compare the graph with
        return f"{label}: not compared, PyTorch refuses this input: {error}", None

    def matched_counts(results):
        return [match_detections(result["instances"], mine, TOP_DETECTIONS) for result, mine in zip(results, ours)]

    def shown(matches):
        return ", ".join(f"{matched}/{compared}" for matched, compared in matches)

    matches = matched_counts(references)
    graph_counts, pytorch_counts = _token_counts(outputs, references)
    same_counts = graph_counts == pytorch_counts
    line = f"{label}: top-{matches[0][1]} detections matched {shown(matches)}"
    ok = all(matched == compared for matched, compared in matches)
    if not ok:
        report, ranking = Report(), torch.from_numpy(outputs[QUERY_RANKING_OUTPUT])
        with torch.no_grad(), ForcedDecisions(model, report, "", **graph_decisions(outputs)), \
                ForcedQueryRanking(model, ranking) as forced:
            matches = matched_counts(model.forward_inference(items))
        taken = forced.forced and all(row[3] for row in report.rows)
        ok = taken and all(matched == compared for matched, compared in matches)
        line += (f"; with the graph's decisions ({_decisions_text(report, forced, ranking.numel())}: "
                 f"{'taken' if taken else 'NOT A TIE'}) {shown(matches)}")
    ok = ok and same_counts
    counts = (f"token counts per encoder layer {graph_counts[0]}, fine-grained {graph_counts[1]}" if len(items) == 1
              else f"token counts per encoder layer {graph_counts}")
    line += f", {counts} ({'same' if same_counts else 'DIFFERENT'}) {'ok' if ok else 'MISMATCH'}"
    return line, ok

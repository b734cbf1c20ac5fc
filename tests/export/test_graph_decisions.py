"""Comparing a graph with PyTorch through near-ties: the graph's ranking decisions (query ranking, foreground and
fine-grained token sets) are PyTorch's own, taken only where they are ties, and a check that meets anything else
fails."""
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from export_test_utils import tiny_model  # noqa: E402

from focus_detr.analysis.inputs import synthetic_inputs  # noqa: E402
from focus_detr.export import ForcedQueryRanking, OnnxPredictor, graph_decisions  # noqa: E402
from focus_detr.export.verification import compare_with_pytorch  # noqa: E402


class _StubTransformer:
    def select_queries(self, scores):
        return scores.topk(3, dim=1)[1]


class _StubModel:
    transformer = _StubTransformer()


def test_forced_query_ranking_takes_ties_only():
    model = _StubModel()
    scores = torch.tensor([[3.0, 2.0, 2.0 + 1e-6, 1.0]])  # ours: [0, 2, 1]
    with ForcedQueryRanking(model, torch.tensor([[0, 1, 2]])) as tie:
        assert model.transformer.select_queries(scores).tolist() == [[0, 1, 2]]
    assert tie.forced and tie.differ == 2 and tie.gap <= tie.tolerance
    with ForcedQueryRanking(model, torch.tensor([[0, 1, 3]])) as worse:
        assert model.transformer.select_queries(scores).tolist() == [[0, 2, 1]]
    assert not worse.forced and worse.gap == pytest.approx(1.0)
    with ForcedQueryRanking(model, torch.tensor([[0, 1]])) as short:
        assert model.transformer.select_queries(scores).tolist() == [[0, 2, 1]]
    assert not short.forced
    assert "select_queries" not in vars(model.transformer)  # the model's own method again


def test_graph_query_ranking_output_is_pytorchs_ranking(tiny_export, parity_fixture):
    model = tiny_model(parity_fixture)
    predictor = OnnxPredictor(str(tiny_export / "model.onnx"), num_threads=1, decisions=True)
    item = synthetic_inputs(256, 320, seed=1)[0]
    captured = {}
    with torch.no_grad(), ForcedQueryRanking(model, torch.from_numpy(predictor.run(item["image"])["query_ranking"])) as forced:
        choose = model.transformer.select_queries
        model.transformer.select_queries = lambda scores: captured.setdefault("inds", choose(scores))
        model.forward_inference([item])
    assert forced.forced and forced.differ == 0
    assert captured["inds"].shape == (1, model.transformer.num_queries)


def test_graph_check_refuses_a_ranking_that_is_not_a_tie(tiny_export, parity_fixture):
    model = tiny_model(parity_fixture)
    predictor = OnnxPredictor(str(tiny_export / "model.onnx"), num_threads=1, decisions=True)
    item = synthetic_inputs(256, 320, seed=1)[0]
    line, ok = compare_with_pytorch(model, predictor, [item])
    assert ok and "matched 100/100," in line, line

    class Tampered:
        """The graph's outputs with a changed best score and the query ranking reversed."""

        instances = staticmethod(OnnxPredictor.instances)

        def run(self, image):
            outputs = predictor.run(image)
            outputs["scores"][outputs["scores"].argmax()] += 0.01
            outputs["query_ranking"] = outputs["query_ranking"][:, ::-1].copy()
            return outputs

    line, ok = compare_with_pytorch(model, Tampered(), [item])
    assert not ok and "NOT A TIE" in line and line.endswith("MISMATCH"), line


def test_graph_token_decisions_are_pytorchs_and_a_check_takes_ties_only(tiny_export, parity_fixture):
    from focus_detr.analysis.forced_decisions import ForcedDecisions
    from focus_detr.analysis.parity import Report

    model = tiny_model(parity_fixture)
    predictor = OnnxPredictor(str(tiny_export / "model.onnx"), num_threads=1, decisions=True)
    item = synthetic_inputs(256, 320, seed=1)[0]
    outputs = predictor.run(item["image"])
    decisions = graph_decisions(outputs)
    num_layers = len(model.transformer.encoder.layers)
    assert len(decisions["foreground_inds"]) == len(decisions["fine_grained"]) == num_layers
    report = Report()
    with torch.no_grad(), ForcedDecisions(model, report, "", **decisions):
        model.forward_inference([item])
    compared = [row for row in report.rows if row[0].endswith("tokens") and row[0].startswith("layer")]
    assert len(compared) == 2 * num_layers and all(row[3] and row[1].startswith("0 differ") for row in compared)

    class Tampered:
        """The graph's outputs with a changed best score and one fine-grained token swapped for another."""

        instances = staticmethod(OnnxPredictor.instances)

        def run(self, image):
            outputs = predictor.run(image)
            outputs["scores"][outputs["scores"].argmax()] += 0.01
            fine = outputs["fine_grained_inds_layer0"]
            outside = sorted(set(range(outputs["foreground_inds_layer0"].shape[1])) - set(fine[0].tolist()))
            fine[0, 0] = outside[len(outside) // 2]
            return outputs

    line, ok = compare_with_pytorch(model, Tampered(), [item])
    assert not ok and "layer0 fine-grained tokens 1 differ" in line and "NOT A TIE" in line, line


def test_an_input_pytorch_refuses_is_named_and_not_counted_as_a_difference(tiny_export, parity_fixture, monkeypatch):
    # e.g. --verify-sizes 4x4 with a model whose GroupNorm then sees one value per group: the graph runs there
    model = tiny_model(parity_fixture)
    predictor = OnnxPredictor(str(tiny_export / "model.onnx"), num_threads=1, decisions=True)

    def refuse(items, **kwargs):
        raise ValueError("the image is too small for this model: a GroupNorm layer gets a single value per group")

    monkeypatch.setattr(model, "forward_inference", refuse)
    line, ok = compare_with_pytorch(model, predictor, synthetic_inputs(4, 4, seed=1))
    assert ok is None and line == ("4x4: not compared, PyTorch refuses this input: the image is too small for this "
                                   "model: a GroupNorm layer gets a single value per group")

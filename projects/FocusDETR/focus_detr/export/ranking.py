"""Comparing an exported graph with PyTorch through near-ties in the query ranking.

Focus-DETR gives each decoder query the learnt content embedding of its rank among the encoder's proposals. Two
proposal scores that agree to float32 rounding can come out in either order when onnxruntime and PyTorch run
different kernels, and a swapped pair gives those two queries each other's content embedding: their detections
change completely while every computation is right (``tools/check_parity.py`` meets the same against the official
code). Random weights crowd the 900 best proposals into a narrow score band (R50 at 480x640: 18 adjacent gaps under
1e-5), so such a swap happens at some inputs. To still compare everything else, :func:`graph_with_query_ranking`
adds the graph's own query ranking as an output, and :class:`ForcedQueryRanking` runs PyTorch with that ranking after
checking that it is PyTorch's own up to near-ties (``focus_detr.analysis.forced_decisions.ranking_gap``, the rule of
``tools/check_parity.py``).
"""
from typing import Optional

import torch

from ..analysis.forced_decisions import ranking_gap

__all__ = ["QUERY_RANKING_OUTPUT", "ForcedQueryRanking", "graph_with_query_ranking"]

QUERY_RANKING_OUTPUT = "query_ranking"
# The exporter names nodes by module scope; the query selection is the one TopK of FocusDETRTransformer itself.
_QUERY_TOPK_SCOPE = "/transformer"


def graph_with_query_ranking(path: str) -> bytes:
    """The serialised graph of ``path`` with one more output, ``query_ranking`` ``(1, Q)`` int64: the proposals that
    became decoder queries, best first (the indices of the transformer's TopK)."""
    import onnx

    model = onnx.load(path)
    nodes = [n for n in model.graph.node if n.op_type == "TopK" and n.name.rsplit("/", 1)[0] == _QUERY_TOPK_SCOPE]
    if len(nodes) != 1:
        raise ValueError(
            f"{path}: expected one TopK node in scope {_QUERY_TOPK_SCOPE!r} (the query selection), found {len(nodes)}"
        )
    model.graph.node.append(onnx.helper.make_node("Identity", [nodes[0].output[1]], [QUERY_RANKING_OUTPUT]))
    model.graph.output.append(
        onnx.helper.make_tensor_value_info(QUERY_RANKING_OUTPUT, onnx.TensorProto.INT64, [1, "num_queries"])
    )
    return model.SerializeToString()


class ForcedQueryRanking:
    """While active, ``model.transformer.select_queries`` returns ``ranking`` (``(1, Q)`` proposal indices, best
    first) instead of its own choice, if ``ranking`` is its choice up to ties (:func:`ranking_gap`, rank by rank).
    Otherwise the model keeps its own choice.

    After the model's forward: ``differ`` (how many ranks differ), ``gap`` (the largest score difference of a rank),
    ``tolerance`` and ``forced`` (whether ``ranking`` was taken).
    """

    def __init__(self, model, ranking: torch.Tensor):
        self.model, self.ranking = model, torch.as_tensor(ranking)
        self.differ: Optional[int] = None
        self.gap = self.tolerance = float("nan")
        self.forced = False

    def __enter__(self):
        transformer = self.model.transformer
        choose = transformer.select_queries

        def choose_forced(proposal_scores: torch.Tensor) -> torch.Tensor:
            ours = choose(proposal_scores)
            forced = self.ranking.to(ours.device)
            if forced.shape != ours.shape:
                self.differ, self.forced = ours.numel(), False
                return ours
            self.differ, self.gap, self.tolerance = ranking_gap(proposal_scores, ours, forced, ordered=True)
            self.forced = self.gap <= self.tolerance
            return forced if self.forced else ours

        transformer.select_queries = choose_forced
        return self

    def __exit__(self, *exc):
        del self.model.transformer.select_queries

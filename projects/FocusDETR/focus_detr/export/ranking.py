"""Comparing an exported graph with PyTorch through near-ties in its ranking decisions.

Focus-DETR ranks tokens three times: the foreground tokens of each encoder layer, the fine-grained tokens among
them, and the proposals that become decoder queries (a query's rank picks its learnt content embedding). Two scores
that agree to float32 rounding can come out in either order when onnxruntime and PyTorch run different kernels, and
a swapped pair at the edge of a token set, or in the query ranking, changes detections while every computation is
right (``tools/check_parity.py`` meets the same against the official code). Random weights crowd the scores into
narrow bands (R50 at 480x640: 18 adjacent gaps under 1e-5 among the 900 best proposals), so such a swap happens at
some inputs. To still compare everything else, :func:`graph_with_decisions` adds the graph's own decisions as
outputs, and PyTorch is run with them (:class:`ForcedQueryRanking`, and for the token sets
``focus_detr.analysis.forced_decisions.ForcedDecisions``) after checking that each is PyTorch's own up to near-ties
(``focus_detr.analysis.forced_decisions.ranking_gap``, the rule of ``tools/check_parity.py``).
"""
import re
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ..analysis.forced_decisions import ranking_gap

__all__ = ["QUERY_RANKING_OUTPUT", "ForcedQueryRanking", "graph_decisions", "graph_with_decisions"]

QUERY_RANKING_OUTPUT = "query_ranking"
_FOREGROUND_OUTPUT, _FINE_GRAINED_OUTPUT = "foreground_inds_layer", "fine_grained_inds_layer"  # + the layer's index
# The exporter names nodes by module scope: the query selection is the one TopK of FocusDETRTransformer itself, the
# foreground tokens one TopK per encoder layer in the selector (in the order of the layers), and each encoder
# layer's fine-grained tokens its own TopK.
_QUERY_TOPK = re.compile(r"/transformer/TopK")
_FOREGROUND_TOPK = re.compile(r"/transformer/foreground_selector/TopK(?:_(\d+))?")
_FINE_GRAINED_TOPK = re.compile(r"/transformer/encoder/layers\.(\d+)/TopK")


def _topk_nodes(graph, pattern) -> List[Tuple[int, object]]:
    """The TopK nodes whose name matches ``pattern`` in full, with the number the pattern captures (0 if none)."""
    found = []
    for node in graph.node:
        match = pattern.fullmatch(node.name) if node.op_type == "TopK" else None
        if match:
            found.append((int(match.group(1) or 0) if match.groups() else 0, node))
    return sorted(found, key=lambda pair: pair[0])


def graph_with_decisions(path: str) -> Tuple[bytes, List[str]]:
    """The serialised graph of ``path`` with its ranking decisions as more outputs, and their names: ``query_ranking``
    ``(B, Q)`` int64 (B = 1 for a one-image graph), the proposals that became decoder queries, best first; per encoder
    layer j ``foreground_inds_layer<j>`` ``(B, k_j)``, its foreground tokens, and (where the layers have fine-grained
    attention) ``fine_grained_inds_layer<j>`` ``(B, m)``, the positions of its fine-grained tokens among them."""
    import onnx

    model = onnx.load(path)
    graph = model.graph
    queries = _topk_nodes(graph, _QUERY_TOPK)
    if len(queries) != 1:
        raise ValueError(f"{path}: expected one TopK node named /transformer/TopK (the query selection), found "
                         f"{len(queries)}")
    foreground, fine_grained = _topk_nodes(graph, _FOREGROUND_TOPK), _topk_nodes(graph, _FINE_GRAINED_TOPK)
    if fine_grained and len(fine_grained) != len(foreground):
        raise ValueError(f"{path}: {len(foreground)} foreground token selections but {len(fine_grained)} encoder "
                         "layers with fine-grained tokens")
    outputs = [(QUERY_RANKING_OUTPUT, queries[0][1])]
    outputs += [(f"{_FOREGROUND_OUTPUT}{j}", node) for j, (_, node) in enumerate(foreground)]
    outputs += [(f"{_FINE_GRAINED_OUTPUT}{j}", node) for j, node in fine_grained]
    for name, node in outputs:
        graph.node.append(onnx.helper.make_node("Identity", [node.output[1]], [name]))
        graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.INT64, ["batch", None]))
    return model.SerializeToString(), [name for name, _ in outputs]


def graph_decisions(outputs: Dict[str, np.ndarray]) -> Dict[str, Optional[List[torch.Tensor]]]:
    """The token decisions among a graph's outputs (:func:`graph_with_decisions`) as
    ``focus_detr.analysis.forced_decisions.ForcedDecisions`` takes them: ``foreground_inds`` and ``fine_grained``
    per encoder layer (None where the graph has none)."""
    def per_layer(prefix):
        layers = sorted((int(name[len(prefix):]), value) for name, value in outputs.items() if name.startswith(prefix))
        return [torch.from_numpy(value) for _, value in layers] or None

    return {"foreground_inds": per_layer(_FOREGROUND_OUTPUT), "fine_grained": per_layer(_FINE_GRAINED_OUTPUT)}


class ForcedQueryRanking:
    """While active, ``model.transformer.select_queries`` returns ``ranking`` (``(B, Q)`` proposal indices, best
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

"""Deployment: ONNX export of the inference path (one graph, any input size, batch 1), an onnxruntime predictor and
the graph's COCO AP next to PyTorch's."""
from .compare import match_detections
from .evaluation import AP_KEYS, OnnxAsModel, ap_table, compare_ap, evaluate_onnx_and_pytorch
from .onnx_export import (
    DEFAULT_OPSET,
    INPUT_NAME,
    MIN_OPSET,
    OUTPUT_NAMES,
    ExportableFocusDETR,
    export_metadata,
    export_onnx,
    max_export_opset,
    require_packages,
)
from .predictor import OnnxPredictor, check_graph_fits_config, check_onnx_file, graph_weights
from .ranking import QUERY_RANKING_OUTPUT, ForcedQueryRanking, graph_with_query_ranking

__all__ = [
    "AP_KEYS",
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "MIN_OPSET",
    "OUTPUT_NAMES",
    "QUERY_RANKING_OUTPUT",
    "ExportableFocusDETR",
    "ForcedQueryRanking",
    "OnnxAsModel",
    "OnnxPredictor",
    "ap_table",
    "check_graph_fits_config",
    "check_onnx_file",
    "graph_weights",
    "compare_ap",
    "evaluate_onnx_and_pytorch",
    "export_metadata",
    "export_onnx",
    "graph_with_query_ranking",
    "match_detections",
    "max_export_opset",
    "require_packages",
]

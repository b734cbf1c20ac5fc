"""Deployment: ONNX export of the inference path (one graph, any input size; one image at a time, or batched), an
onnxruntime predictor and the graph's COCO AP next to PyTorch's."""
from .compare import match_detections
from .evaluation import AP_KEYS, OnnxAsModel, ap_table, compare_ap, evaluate_onnx_and_pytorch
from .onnx_export import (
    BATCHED_INPUT_NAMES,
    BATCHED_OUTPUT_NAMES,
    DEFAULT_OPSET,
    INPUT_NAME,
    MIN_OPSET,
    OUTPUT_NAMES,
    BatchedExportableFocusDETR,
    ExportableFocusDETR,
    check_graph,
    export_onnx,
    max_export_opset,
    pad_batch,
    require_packages,
)
from .metadata import export_metadata, graph_weights, model_json_classes
from .graph_config import check_graph_fits_config
from .predictor import OnnxPredictor, check_onnx_file
from .ranking import QUERY_RANKING_OUTPUT, ForcedQueryRanking, graph_decisions, graph_with_decisions

__all__ = [
    "AP_KEYS",
    "BATCHED_INPUT_NAMES",
    "BATCHED_OUTPUT_NAMES",
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "MIN_OPSET",
    "OUTPUT_NAMES",
    "QUERY_RANKING_OUTPUT",
    "BatchedExportableFocusDETR",
    "ExportableFocusDETR",
    "ForcedQueryRanking",
    "OnnxAsModel",
    "OnnxPredictor",
    "ap_table",
    "check_graph",
    "check_graph_fits_config",
    "check_onnx_file",
    "graph_weights",
    "compare_ap",
    "evaluate_onnx_and_pytorch",
    "export_metadata",
    "export_onnx",
    "graph_decisions",
    "graph_with_decisions",
    "match_detections",
    "max_export_opset",
    "model_json_classes",
    "pad_batch",
    "require_packages",
]

"""Deployment: ONNX export of the inference path (one graph, any input size, batch 1) and an onnxruntime predictor."""
from .compare import match_detections
from .onnx_export import DEFAULT_OPSET, INPUT_NAME, OUTPUT_NAMES, ExportableFocusDETR, export_metadata, export_onnx
from .predictor import OnnxPredictor

__all__ = [
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "OUTPUT_NAMES",
    "ExportableFocusDETR",
    "OnnxPredictor",
    "export_metadata",
    "export_onnx",
    "match_detections",
]

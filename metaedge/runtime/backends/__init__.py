"""Inference backends: TensorRT, ONNX Runtime, torch (development). See base.py for the interface."""

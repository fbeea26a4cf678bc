"""Deployment: exportable graphs, ONNX export, engines, runtimes and checks."""

"""Serving: run the exported engines behind NVIDIA Triton Inference Server."""

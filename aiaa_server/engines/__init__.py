"""Engines run a model's network on a batch: local TorchScript, or a Triton Inference Server."""

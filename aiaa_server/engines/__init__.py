"""Engines run a model's network on a batch: local TorchScript or torch.export programs, or a Triton Inference Server."""

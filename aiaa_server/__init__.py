"""aiaa-server: an open AI-Assisted Annotation server speaking the NVIDIA Clara AIAA protocol."""

__version__ = "0.1.0"

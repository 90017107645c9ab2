"""Tests of the demo package (aiaa_demo): phantoms, synthetic shapes, the shared demo training loop."""

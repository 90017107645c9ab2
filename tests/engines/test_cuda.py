"""Device paths and precision (`engines.cuda`): bfloat16 autocast on the CPU with the demo spleen model; the
CUDA path (pinned copies, per-thread streams) where a GPU is present."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from aiaa_demo.phantoms import ORGAN_LABELS, make_abdomen_phantom
from aiaa_server.engines.cuda import AcceleratedEngine, precision_dtype, thread_stream, to_device, to_host
from aiaa_server.engines.torchscript import TorchScriptPool

REPO = Path(__file__).resolve().parents[2]
SPLEEN_MODEL = REPO / "models" / "demo_spleen_ct_segmentation" / "models" / "model.ts"
CROP = 64  # the model's sliding-window roi
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def spleen_crop() -> torch.Tensor:
    """A (1, 1, 64, 64, 64) crop of a 2.5 mm phantom around its spleen, scaled as the model's pre-transforms
    scale CT (-200..300 HU to 0..1)."""
    phantom = make_abdomen_phantom(np.random.default_rng(3), shape=(128, 128, 72), spacing=(2.5, 2.5, 2.5),
                                   lps_orientation=False)
    centre = np.argwhere(phantom.labels == ORGAN_LABELS["spleen"]).mean(axis=0).astype(int)
    start = [int(np.clip(c - CROP // 2, 0, s - CROP)) for c, s in zip(centre, phantom.image.shape, strict=True)]
    crop = phantom.image[tuple(slice(b, b + CROP) for b in start)]
    scaled = np.clip((crop + 200.0) / 500.0, 0.0, 1.0).astype(np.float32)
    return torch.from_numpy(scaled)[None, None]


def spleen_engine(device: str = "cpu") -> object:
    # as the factory loads a model for autocast: without the float32-only oneDNN kernels
    return TorchScriptPool().get(SPLEEN_MODEL, torch.device(device), "demo_spleen_ct_segmentation", optimize=False)


def test_bfloat16_autocast_on_cpu_matches_float32() -> None:
    crop = spleen_crop()
    reference = AcceleratedEngine(spleen_engine(), "float32")(crop)  # type: ignore[arg-type]
    low = AcceleratedEngine(spleen_engine(), "bfloat16")(crop)  # type: ignore[arg-type]
    assert low.dtype == torch.float32 and low.shape == reference.shape == (1, 2, CROP, CROP, CROP)
    assert not torch.equal(low, reference)  # autocast did run the forward in bfloat16
    agreement = (low.argmax(dim=1) == reference.argmax(dim=1)).float().mean().item()
    assert agreement >= 0.99
    assert (reference.argmax(dim=1) == 1).any()  # the crop holds spleen: the agreement is not all background


def test_float32_is_the_plain_forward() -> None:
    crop = spleen_crop()
    engine = spleen_engine()
    assert torch.equal(AcceleratedEngine(engine, "float32")(crop), engine(crop))  # type: ignore[arg-type,operator]


def test_unknown_precision_is_refused() -> None:
    assert precision_dtype("bfloat16") is torch.bfloat16 and precision_dtype("float32") is None
    with pytest.raises(ValueError, match="unknown precision"):
        AcceleratedEngine(spleen_engine(), "int8")  # type: ignore[arg-type]


def test_cpu_copies_are_plain() -> None:
    batch = torch.ones(1, 1, 4, 4, 4, dtype=torch.float16)
    on_cpu = to_device(batch, torch.device("cpu"))
    assert on_cpu.dtype == torch.float32 and not on_cpu.is_pinned()
    assert to_host(on_cpu.half()).dtype == torch.float32


@needs_cuda
def test_cuda_engine_returns_finished_float32_where_the_batch_was() -> None:
    crop = spleen_crop()
    reference = AcceleratedEngine(spleen_engine("cpu"), "float32")(crop)  # type: ignore[arg-type]
    engine = AcceleratedEngine(spleen_engine("cuda"), "float32")  # type: ignore[arg-type]
    output = engine(crop)
    assert output.device.type == "cpu" and output.is_pinned() and output.dtype == torch.float32
    assert (output.argmax(dim=1) == reference.argmax(dim=1)).float().mean().item() >= 0.999
    on_gpu = engine(crop.cuda())  # a batch already on the device (sliding window's sw_device) stays there
    assert on_gpu.is_cuda and on_gpu.dtype == torch.float32
    torch.testing.assert_close(on_gpu.cpu(), output)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_sliding_window_over_a_bfloat16_engine(device: str) -> None:
    from monai.inferers import sliding_window_inference

    crop = spleen_crop()

    def slide(engine: AcceleratedEngine) -> torch.Tensor:
        with torch.inference_mode():
            return sliding_window_inference(crop, roi_size=[48, 48, 48], sw_batch_size=4, predictor=engine,
                                            overlap=0.25, sw_device=engine.device, device=torch.device("cpu"))

    reference = slide(AcceleratedEngine(spleen_engine("cpu"), "float32"))  # type: ignore[arg-type]
    output = slide(AcceleratedEngine(spleen_engine(device), "bfloat16"))  # type: ignore[arg-type]
    assert output.device.type == "cpu" and output.shape == reference.shape
    assert (output.argmax(dim=1) == reference.argmax(dim=1)).float().mean().item() >= 0.99


@needs_cuda
def test_each_thread_has_its_own_stream() -> None:
    device = torch.device("cuda")
    streams: list[torch.cuda.Stream] = []
    threads = [threading.Thread(target=lambda: streams.append(thread_stream(device))) for _ in range(2)]
    for thread in threads:
        thread.start()
        thread.join()
    assert streams[0] != streams[1]
    assert thread_stream(device) is thread_stream(device)

"""BatchingEngine: concurrent same-shaped calls share one forward (real threads, a real TorchScript module)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from aiaa_server.engines.batching import BatchingEngine
from aiaa_server.engines.torchscript import TorchScriptPool

LONG_WINDOW = 600.0  # groups in these tests close by filling up; the window only ends a lone caller's wait
SHORT_WINDOW = 0.01


class SmallNet(torch.nn.Module):
    """A tiny 3D conv net; `poison` inputs (any value > 1e6) make it raise."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(2, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x > 1e6).any()):
            raise RuntimeError("poisoned batch")
        return torch.relu(self.conv(x))


class CountingEngine:
    """Counts the forwards and the batch sizes the wrapped engine saw."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.name = "small"
        self.device = torch.device("cpu")
        self.sizes: list[int] = []

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.sizes.append(batch.shape[0])
        return self.inner(batch)  # type: ignore[operator]


@pytest.fixture()
def engine(tmp_path: Path) -> CountingEngine:
    path = tmp_path / "model.ts"
    torch.jit.save(torch.jit.script(SmallNet().eval()), str(path))
    return CountingEngine(TorchScriptPool().get(path, torch.device("cpu"), "small"))


def call_together(batching: BatchingEngine, batches: list[torch.Tensor]) -> list[object]:
    """Call `batching` from one thread per batch, released together by a barrier; results or exceptions."""
    results: list[object] = [None] * len(batches)
    barrier = threading.Barrier(len(batches))

    def call(index: int) -> None:
        barrier.wait()
        try:
            results[index] = batching(batches[index])
        except Exception as exc:  # noqa: BLE001 - kept for the assertions
            results[index] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def crops(count: int, shape: tuple[int, ...] = (2, 8, 8, 8), seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn((1, *shape), generator=generator) for _ in range(count)]


def test_four_threads_share_one_forward_with_each_its_own_rows(engine: CountingEngine) -> None:
    batching = BatchingEngine(engine, LONG_WINDOW, max_batch=4)
    batches = crops(4)
    results = call_together(batching, batches)
    assert engine.sizes == [4]
    assert batching.forwards == 1
    for batch, result in zip(batches, results, strict=True):
        assert isinstance(result, torch.Tensor) and result.shape == (1, 3, 8, 8, 8)
        torch.testing.assert_close(result, engine.inner(batch), rtol=1e-5, atol=1e-6)


def test_a_lone_caller_runs_its_own_forward_after_the_window(engine: CountingEngine) -> None:
    batching = BatchingEngine(engine, SHORT_WINDOW, max_batch=4)
    (batch,) = crops(1)
    result = batching(batch)
    assert engine.sizes == [1]
    assert torch.equal(result, engine.inner(batch))


def test_an_exception_reaches_every_caller(engine: CountingEngine) -> None:
    batching = BatchingEngine(engine, LONG_WINDOW, max_batch=3)
    batches = crops(3)
    batches[1] = batches[1] + 1e7  # one bad crop fails the shared forward
    results = call_together(batching, batches)
    assert engine.sizes == [3]
    assert all(isinstance(r, Exception) and "poisoned batch" in str(r) for r in results)


def test_different_shapes_are_never_mixed(engine: CountingEngine) -> None:
    batching = BatchingEngine(engine, LONG_WINDOW, max_batch=2)
    small, large = crops(2, (2, 8, 8, 8)), crops(2, (2, 8, 8, 12), seed=2)
    results = call_together(batching, [small[0], large[0], small[1], large[1]])
    assert sorted(engine.sizes) == [2, 2]
    for batch, result in zip([small[0], large[0], small[1], large[1]], results, strict=True):
        assert isinstance(result, torch.Tensor) and result.shape[2:] == batch.shape[2:]
        torch.testing.assert_close(result, engine.inner(batch), rtol=1e-5, atol=1e-6)


def test_max_batch_bounds_each_forward(engine: CountingEngine) -> None:
    batching = BatchingEngine(engine, SHORT_WINDOW, max_batch=2)
    batches = crops(5)
    results = call_together(batching, batches)
    assert sum(engine.sizes) == 5 and max(engine.sizes) <= 2
    for batch, result in zip(batches, results, strict=True):
        assert isinstance(result, torch.Tensor)
        torch.testing.assert_close(result, engine.inner(batch), rtol=1e-5, atol=1e-6)


def test_a_batch_larger_than_max_batch_runs_alone(engine: CountingEngine) -> None:
    batching = BatchingEngine(engine, SHORT_WINDOW, max_batch=2)
    batch = torch.cat(crops(3))
    assert batching(batch).shape[0] == 3
    assert engine.sizes == [3]


def test_bad_window_or_max_batch_is_refused(engine: CountingEngine) -> None:
    with pytest.raises(ValueError, match="window_s"):
        BatchingEngine(engine, 0.0, 4)
    with pytest.raises(ValueError, match="max_batch"):
        BatchingEngine(engine, 0.005, 0)

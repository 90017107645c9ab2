"""Click batching end to end: a real server with `--click_batch_ms` and two workers answers concurrent DeepGrow 3D
clicks (its engine a BatchingEngine) with the masks one click alone gets. Whether two clicks' forwards met
within the window depends on timing (the log says so at debug level); the masks must be right either way.

The window is long (1 s) so that concurrent clicks usually do share; bfloat16 is left out here: on this CPU its
autocast forward is far slower than float32 (tests/engines/test_cuda.py covers it in-process)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from aiaa_demo.synthetic_shapes import TRAIN_FAMILIES, first_click, make_scene
from aiaa_server.imaging.formats import ImageFormat
from aiaa_server.imaging.io import decode_result
from tests.support.multipart import parse_multipart
from tests.support.server import LiveServer, start_server
from tests.support.volumes import dice, save_nifti

DEEPGROW_3D = "demo_deepgrow_3d"


@pytest.fixture(scope="module")
def batching_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(tmp_path_factory.mktemp("device-options") / "workspace",
                        ["--workers", "2", "--click_batch_ms", "1000",
                         "--click_batch_max", "4", "--uncertainty_interval", "3600"])
    yield live
    live.stop()


def click_mask(server: LiveServer, session_id: str, point: list[int]) -> np.ndarray:
    params = {"foreground": [point], "background": [], "current_point": point}
    with server.client() as client:
        response = client.post("/v1/deepgrow", params={"model": DEEPGROW_3D, "session_id": session_id},
                               data={"params": json.dumps(params)})
    assert response.status_code == 200, response.text
    array, _ = decode_result(parse_multipart(response.headers["content-type"], response.content).image,
                             ImageFormat.NIFTI_GZ)
    return np.asarray(array) > 0


def test_concurrent_clicks_get_the_masks_of_single_clicks(batching_server: LiveServer, tmp_path: Path) -> None:
    scene = make_scene(np.random.default_rng(77), shape=(140, 150, 60), spacing=(1.0, 1.0, 2.0),
                       families=TRAIN_FAMILIES, lps=False, n_objects=(3, 5))
    path = save_nifti(tmp_path / "shapes.nii.gz", scene.image.astype(np.int16), scene.affine)
    with batching_server.client() as client, open(path, "rb") as handle:
        created = client.put("/session/", files={"image": (path.name, handle)})
    assert created.status_code == 200, created.text
    session_id = created.json()["session_id"]
    points = [first_click(scene.mask(label)) for label in (1, 2, 3)]
    alone = [click_mask(batching_server, session_id, point) for point in points]
    together: list[np.ndarray | None] = [None] * len(points)
    barrier = threading.Barrier(len(points))

    def click(index: int) -> None:
        barrier.wait()
        together[index] = click_mask(batching_server, session_id, points[index])

    threads = [threading.Thread(target=click, args=(i,)) for i in range(len(points))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for point, single, shared in zip(points, alone, together, strict=True):
        assert shared is not None
        assert single[tuple(point)]  # the click's mask holds the clicked voxel
        assert dice(shared, single) >= 0.98  # batched rows equal single forwards up to float rounding

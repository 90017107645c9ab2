"""The web annotator (`/ui`) in a real headless Chromium against a real server on loopback, behind a proxy prefix.

A phantom CT is opened from disk, DeepGrow clicks (foreground, background) come back as a mask overlay whose
pixels appear in the canvas and that holds the clicked voxel, undo takes it away, the label downloads as NIfTI and
saves to the datastore, server errors show their `detail`, and no request of the page leaves loopback.
Skips (saying so) only where Chromium or its driver is missing; `.ci/deploy-deps.sh` installs both.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.select import Select

from aiaa_demo.datasets.dicom_export import volume_to_dicom_series
from aiaa_demo.phantoms import ORGAN_LABELS, make_abdomen_phantom, save_nifti
from tests.support.server import LiveServer, start_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver") or ("/usr/lib/chromium/chromedriver"
                                          if os.path.exists("/usr/lib/chromium/chromedriver") else None)
if not (CHROMIUM and DRIVER):
    pytest.skip("Chromium and chromedriver are not installed (apt-get install chromium chromium-driver; "
                ".ci/deploy-deps.sh does it)", allow_module_level=True)

PREFIX = "/aiaa"
WAIT_S = 180.0  # generous: a loaded 2-core CI machine; nothing asserts on durations
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("ui")
    with start_server(root / "ws", ["--root_path", PREFIX], prefix=PREFIX) as server:
        yield server


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    # LPS affine: NiiVue shows it reoriented, the page must still send the voxel indices of the file
    ct = make_abdomen_phantom(np.random.default_rng(3), shape=(112, 112, 40), lps_orientation=True)
    path = save_nifti(ct, tmp_path_factory.mktemp("phantom") / "phantom_ct.nii.gz")
    return path, ct.labels


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000",
                 "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never look for drivers on the internet
    os.environ.setdefault("SE_AVOID_STATS", "true")
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(condition: Callable[[], Any], what: str, browser: Any = None) -> Any:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    page = browser.find_element(By.TAG_NAME, "aside").text if browser else ""
    raise AssertionError(f"timed out waiting for {what}\n{page}")


def idle_after(browser: Any, requests: int) -> None:
    wait_for(lambda: browser.execute_script(
        "return document.body.dataset.state === 'idle' && (aiaaUI.state.requests >= arguments[0]"
        " || !document.getElementById('error').hidden)", requests), f"{requests} inference answers", browser)
    assert browser.find_element(By.ID, "error").text == ""


def canvas_rgb(browser: Any, path: Path | None = None) -> np.ndarray:
    png = browser.find_element(By.ID, "viewer").screenshot_as_png
    if path:
        path.write_bytes(png)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def red_pixels(browser: Any, path: Path | None = None) -> int:
    """Pixels of the canvas where red dominates: the label overlay (the CT is grey)."""
    rgb = canvas_rgb(browser, path)
    return int(((rgb[..., 0] - rgb[..., 1] > 80) & (rgb[..., 0] - rgb[..., 2] > 80)).sum())


def click_voxel(browser: Any, ijk: list[int], background: bool = False) -> None:
    """A real mouse click where the page shows voxel `ijk` (the page tells where that is on its canvas)."""
    canvas = browser.find_element(By.ID, "viewer")
    x, y = browser.execute_script("return aiaaUI.voxelToCanvas(arguments[0])", ijk)
    size = canvas.size
    actions = ActionChains(browser).move_to_element_with_offset(canvas, int(x - size["width"] / 2),
                                                                int(y - size["height"] / 2))
    if background:
        actions.key_down(Keys.SHIFT).click().key_up(Keys.SHIFT).perform()
    else:
        actions.click().perform()


def inside(labels: np.ndarray, organ: str) -> list[int]:
    """A voxel deep inside an organ (its most eroded point)."""
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(np.pad(labels == ORGAN_LABELS[organ], 1))[1:-1, 1:-1, 1:-1]
    return [int(v) for v in np.unravel_index(int(np.argmax(depth)), depth.shape)]


def test_the_page_names_no_external_url(live: LiveServer) -> None:
    with httpx.Client(timeout=30, follow_redirects=False) as client:
        redirect = client.get(live.url("/ui"))
        assert redirect.status_code == 307
        assert redirect.headers["location"] == "ui/"  # relative: right behind any proxy prefix
        page = client.get(live.url("/ui/"))
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        own = [page.text]
        for ref in ("../static/ui/ui.js", "../static/ui/ui.css", "../static/niivue/niivue.umd.js"):
            assert ref in page.text
            asset = client.get(live.url("/ui/") + ref)
            assert asset.status_code == 200, ref
            if "/ui/" in ref:
                own.append(asset.text)
    assert not any("http://" in text or "https://" in text for text in own)


def test_annotate_in_the_browser(live: LiveServer, browser: Any, phantom: tuple[Path, np.ndarray],
                                 tmp_path: Path) -> None:
    image, labels = phantom
    browser.get(live.url("/ui"))
    assert browser.current_url.endswith(f"{PREFIX}/ui/")
    status = browser.execute_async_script(
        "aiaaUI.ready.then(() => arguments[0](document.getElementById('status').textContent))")
    assert status == "open an image", browser.find_element(By.ID, "error").text
    assert browser.execute_script("return aiaaUI.nv.gl !== null")  # WebGL2 (SwiftShader when headless)

    browser.find_element(By.ID, "file").send_keys(str(image))
    wait_for(lambda: browser.find_element(By.ID, "status").text.startswith("ready"), "the session", browser)
    session = browser.execute_script("return aiaaUI.state.session")
    with live.client() as client:
        assert client.get(f"/session/{session}").status_code == 200
    before = red_pixels(browser)

    # window and level: a bone level darkens the soft tissue the CT opened with
    soft_tissue = canvas_rgb(browser)
    set_number = ("const n = document.getElementById(arguments[0]); n.value = arguments[1];"
                  "n.dispatchEvent(new Event('change'));")
    browser.execute_script(set_number, "level", "400")
    wait_for(lambda: canvas_rgb(browser).mean() < soft_tissue.mean() - 3, "a darker picture", browser)
    browser.execute_script(set_number, "level", "40")

    liver = inside(labels, "liver")
    click_voxel(browser, liver)
    idle_after(browser, 1)
    grown = red_pixels(browser, tmp_path / "deepgrow.png")
    assert grown > before + 200, (before, grown)
    assert browser.execute_script("return aiaaUI.state.fg") == [liver]

    # the label downloads as NIfTI on the image's grid, and it holds the voxel clicked
    browser.find_element(By.ID, "download").click()
    download = wait_for(lambda: next(browser.downloads.glob("*_label.nii.gz"), None), "the download", browser)
    wait_for(lambda: download.stat().st_size > 0 and not list(browser.downloads.glob("*.crdownload")), "the file")
    mask = np.asarray(nib.load(download).dataobj)
    assert mask.shape == labels.shape
    assert mask[tuple(liver)] > 0
    assert np.allclose(nib.load(download).affine, nib.load(image).affine)

    # a background click (shift) goes with the foreground one; the session answers without a new upload
    spine = inside(labels, "spine")
    click_voxel(browser, spine, background=True)
    idle_after(browser, 2)
    assert browser.execute_script("return aiaaUI.state.bg") == [spine]
    assert browser.execute_script("return aiaaUI.state.session") == session

    # undo twice: the clicks and the overlay are gone
    for left in (1, 0):
        browser.find_element(By.ID, "undo").click()
        wait_for(lambda left=left: browser.execute_script(
            "return document.body.dataset.state === 'idle' && aiaaUI.state.history.length === arguments[0]", left),
            "undo", browser)
    assert browser.execute_script("return aiaaUI.state.mask === null")
    assert browser.execute_script("return [aiaaUI.state.fg.length, aiaaUI.state.bg.length]") == [0, 0]
    assert red_pixels(browser, tmp_path / "undone.png") <= before + 20  # the planes and the 3D render

    # automatic segmentation; its overlay fades out with the opacity slider; then save to the datastore under an
    # id the annotator chose
    browser.find_element(By.ID, "segment").click()
    idle_after(browser, 3)
    assert red_pixels(browser) > before + 200
    set_range = ("const r = document.getElementById('opacity'); r.value = arguments[0];"
                 "r.dispatchEvent(new Event('input'));")
    browser.execute_script(set_range, "0")
    wait_for(lambda: red_pixels(browser) <= before + 20, "a transparent label", browser)
    browser.execute_script(set_range, "0.5")
    box = browser.find_element(By.ID, "imageId")
    box.clear()
    box.send_keys("ui_phantom")
    browser.find_element(By.ID, "save").click()
    wait_for(lambda: "saved" in browser.find_element(By.ID, "status").text
             or browser.find_element(By.ID, "error").text != "", "the save", browser)
    assert browser.find_element(By.ID, "error").text == ""
    with live.client() as client:
        saved = client.get("/datastore/label", params={"label": "ui_phantom", "tag": "final"})
        assert saved.status_code == 200
        stored = client.get("/datastore/image", params={"image": "ui_phantom"})
        assert stored.status_code == 200
    saved_mask = np.asarray(nib.Nifti1Image.from_bytes(_gunzip(saved.content)).dataobj)
    assert saved_mask.shape == labels.shape
    browser.save_screenshot(str(tmp_path / "ui.png"))  # the whole page: the artefact to look at
    if os.environ.get("AIAA_UI_SCREENSHOT"):  # the README's picture: AIAA_UI_SCREENSHOT=docs/ui.png
        shutil.copy(tmp_path / "ui.png", REPO / os.environ["AIAA_UI_SCREENSHOT"])


def test_open_from_the_datastore(live: LiveServer, browser: Any) -> None:
    """The image saved above comes back from the datastore picker; its label saves without uploading it again.
    The page left closes its session."""
    left = browser.execute_script("return aiaaUI.state.session")
    browser.get(live.url("/ui/"))
    browser.execute_async_script("aiaaUI.ready.then(arguments[0])")
    with live.client() as client:
        wait_for(lambda: client.get(f"/session/{left}").status_code == 404, "the old session closed")
    Select(browser.find_element(By.ID, "datastoreImages")).select_by_value("ui_phantom")
    browser.find_element(By.ID, "datastoreOpen").click()
    wait_for(lambda: browser.find_element(By.ID, "status").text.startswith("ready"), "the image", browser)
    assert browser.execute_script("return aiaaUI.state.datastoreId") == "ui_phantom"
    assert browser.find_element(By.ID, "imageId").get_attribute("value") == "ui_phantom"
    browser.find_element(By.ID, "segment").click()
    idle_after(browser, 1)
    browser.find_element(By.ID, "save").click()
    wait_for(lambda: "saved" in browser.find_element(By.ID, "status").text, "the save", browser)
    with live.client() as client:
        versions = client.get("/datastore/label/info", params={"label": "ui_phantom", "tag": "final"}).json()
    assert len(versions["versions"]) >= 1  # the second save kept the first as a version


def test_a_dicom_series_and_dextr3d(live: LiveServer, browser: Any, tmp_path: Path) -> None:
    """DICOM files go to the datastore (the server reads the series), the page shows the volume it stored, and six
    extreme points of an organ clicked on it come back from DExtr3D as a mask on that organ."""
    ct = make_abdomen_phantom(np.random.default_rng(5), shape=(96, 96, 32), lps_orientation=True)
    series = volume_to_dicom_series(ct.image.astype(np.int16), ct.affine, tmp_path / "series")
    browser.get(live.url("/ui/"))
    browser.execute_async_script("aiaaUI.ready.then(arguments[0])")
    browser.find_element(By.ID, "file").send_keys("\n".join(str(p) for p in series.paths))
    wait_for(lambda: browser.find_element(By.ID, "status").text.startswith("ready"), "the DICOM session", browser)
    image_id = browser.execute_script("return aiaaUI.state.datastoreId")
    assert image_id and browser.find_element(By.ID, "imageId").get_attribute("value") == image_id
    with live.client() as client:
        stored = client.get("/datastore/image", params={"image": image_id})
    stored_path = tmp_path / "stored.nii.gz"
    stored_path.write_bytes(stored.content)
    stored_affine = nib.load(stored_path).affine

    organ = next(o for o in ("spleen", "left_kidney", "right_kidney", "liver")
                 if (ct.labels == ORGAN_LABELS[o]).sum() > 300)  # the field of view cuts some organs off
    organ_voxels = np.argwhere(ct.labels == ORGAN_LABELS[organ])
    extremes = [organ_voxels[pick(organ_voxels[:, a])] for pick in (np.argmin, np.argmax) for a in range(3)]
    to_stored = np.linalg.inv(stored_affine) @ ct.affine
    points = [[round(float(v)) for v in (to_stored @ [*p, 1.0])[:3]] for p in extremes]
    Select(browser.find_element(By.ID, "mode")).select_by_value("extreme")
    for point in points:
        click_voxel(browser, point)
    assert browser.execute_script("return aiaaUI.state.extreme") == points
    requests = browser.execute_script("return aiaaUI.state.requests")
    browser.find_element(By.ID, "dextr").click()
    idle_after(browser, requests + 1)

    browser.find_element(By.ID, "download").click()
    download = wait_for(lambda: next(browser.downloads.glob(f"{image_id}_label.nii.gz"), None), "the download")
    wait_for(lambda: download.stat().st_size > 0 and not list(browser.downloads.glob("*.crdownload")), "the file")
    mask = np.asarray(nib.load(download).dataobj) > 0
    assert mask.shape == nib.load(stored_path).shape
    # the organ on the stored grid (the same voxels as the phantom's, reindexed by the series' orientation)
    organ_stored = np.zeros(mask.shape, bool)
    index = np.rint((to_stored @ np.c_[organ_voxels, np.ones(len(organ_voxels))].T)[:3].T).astype(int)
    organ_stored[tuple(index.T)] = True
    dice = 2 * (mask & organ_stored).sum() / (mask.sum() + organ_stored.sum())
    assert dice > 0.5, (organ, dice)


def test_server_errors_show_their_detail(live: LiveServer, browser: Any) -> None:
    # after the flow above: the page holds an image and a session
    wait_for(lambda: browser.execute_script("return aiaaUI.state.session"), "a session", browser)
    session = browser.execute_script("return aiaaUI.state.session")
    requests = browser.execute_script("return aiaaUI.state.requests")
    with live.client() as client:  # the session ends on the server: the page uploads again and goes on (440)
        assert client.delete(f"/session/{session}").status_code == 200
    browser.find_element(By.ID, "segment").click()
    idle_after(browser, requests + 1)
    assert browser.execute_script("return aiaaUI.state.session") not in (None, session)

    browser.execute_script("const s = document.getElementById('segModel');"
                           "s.append(new Option('no_such_model', 'no_such_model')); s.value = 'no_such_model';")
    browser.find_element(By.ID, "segment").click()
    error = wait_for(lambda: browser.find_element(By.ID, "error").text, "the error", browser)
    assert error.startswith("segmentation failed: 404") and "no_such_model" in error


def test_no_request_leaves_loopback(live: LiveServer, browser: Any) -> None:
    # every request the page made in the tests above, from Chromium's own network log
    urls = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    assert any("/v1/deepgrow" in url for url in urls)  # the log holds the flow above
    origin = f"http://127.0.0.1:{live.port}/"
    assert [u for u in urls if not u.startswith((origin, "blob:", "data:"))] == []


def _gunzip(data: bytes) -> bytes:
    import gzip

    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data

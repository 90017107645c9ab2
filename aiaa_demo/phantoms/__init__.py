"""Synthetic abdominal CT phantoms.

This package generates simple but anatomically *plausible* abdominal CT volumes
together with a ground-truth organ label map.  They are used to train and test
the bundled DEMO spleen segmentation model and to exercise the server end to end
without shipping any patient data.

All anatomy is defined in patient/world coordinates (NIfTI RAS+ millimetres:
``+x`` towards the patient's right, so the patient's LEFT is ``-x``; ``+y``
anterior; ``+z`` superior).  The voxel array is then sampled through the phantom's affine, so the
spleen is always on the patient's left/posterior side whatever the array
orientation (RAS or the DICOM-derived LPS layout) is.

Everything is vectorised numpy: organs are evaluated only inside their
bounding boxes, so a 512x512x120 volume takes a few seconds.

Example::

    rng = np.random.default_rng(0)
    ph = make_abdomen_phantom(rng)
    save_nifti(ph, "/tmp/img.nii.gz")
    save_nifti(ph, "/tmp/lbl.nii.gz", labels=True)
"""

from aiaa_demo.phantoms.generate import make_abdomen_phantom
from aiaa_demo.phantoms.phantom import ORGAN_LABELS, Phantom, save_nifti

__all__ = ["ORGAN_LABELS", "Phantom", "make_abdomen_phantom", "save_nifti"]

"""The label images' contract: class codes and the dtype of each kind of label image.

One module that the classifier, the measurements, the writers, review and the
napari plugin all read, so that a code or a dtype is defined once.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CLASS_CODES", "CLASS_NAMES", "LABEL_DTYPES"]

#: Class codes of the ``<image>_classes.tif`` label image. For ``safranin-o`` the code of
#: "collagen" (3) holds the fast-green fibrous tissue (docs/stains.md).
CLASS_CODES = {
    "background": 0,
    "other_tissue": 1,
    "proteoglycan": 2,
    "collagen": 3,
    "nuclei": 4,
    "iron": 5,
}
CLASS_NAMES = {code: name for name, code in CLASS_CODES.items()}

#: Pixel type of each kind of label image: ``<image>_pellets.tif`` (pellet ids),
#: ``<image>_classes.tif`` (:data:`CLASS_CODES`), ``<image>_nuclei.tif`` (nucleus instances) and
#: ``<image>_lacunae.tif`` (lacunae: each clear halo with the nuclei it holds; runs before issue 24 lack it).
LABEL_DTYPES = {
    "pellets": np.dtype(np.uint16),
    "classes": np.dtype(np.uint8),
    "nuclei": np.dtype(np.uint32),
    "lacunae": np.dtype(np.uint32),
}

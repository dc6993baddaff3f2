"""Photo -> panorama without a model (backend ``photo``): a preview of image2world.

The photo is placed at yaw = pitch = 0 with its horizontal FOV (as for ``flux-fill``), and
the rest of the sphere is filled classically: OpenCV inpainting (wrapping in longitude) on a
small copy of the panorama, upsampled and blurred, with the photo's own pixels kept exactly.
The surround is a smooth extension of the photo's border colours — a placeholder for the
outpainting model, documented as such, never presented as generated content.
"""

from __future__ import annotations

import numpy as np

from matrix_world.generation.pano_image import DEFAULT_FOV, check_photo, composite, place_photo
from matrix_world.generation.video_fill import inpaint_wrapped

FILL_HEIGHT = 64  # rows of the small panorama the surround is inpainted at


def photo_to_panorama(photo: np.ndarray, height: int, fov: float | None = None,
                      blend_width: int = 8) -> tuple[np.ndarray, np.ndarray, float]:
    """Place ``photo`` on the sphere and fill the rest classically.

    photo: np.ndarray  # [h, w, 3] float32 in [0, 1]
    returns (rgb [height, 2*height, 3] float32, kept [height, 2*height] bool: photo pixels
    copied exactly, fov used in degrees)
    """
    import cv2

    fov = DEFAULT_FOV if fov is None else float(fov)
    placed, coverage = place_photo(check_photo(photo), fov, height)
    small_h = min(FILL_HEIGHT, height)
    small = cv2.resize(placed, (2 * small_h, small_h), interpolation=cv2.INTER_AREA)
    small_cov = cv2.resize(coverage.astype(np.float32), (2 * small_h, small_h), interpolation=cv2.INTER_AREA) > 0.999
    filled = inpaint_wrapped(small, ~small_cov, radius=max(3.0, small_h / 8))
    filled = cv2.GaussianBlur(filled, (0, 0), sigmaX=small_h / 32, borderType=cv2.BORDER_REFLECT)
    surround = cv2.resize(filled, (2 * height, height), interpolation=cv2.INTER_CUBIC)
    keep = coverage.copy()
    rgb = composite(np.clip(surround, 0, 1), placed, keep, coverage, blend_width)
    return rgb, keep, fov

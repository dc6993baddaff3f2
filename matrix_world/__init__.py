"""matrix_world: text or image to an explorable 3D world of Gaussian splats.

Conventions (written down once, here and in DESIGN.md §3):

* Camera and world frames are OpenCV: x right, y down, z forward. The world frame is the
  first camera of the first segment. Poses are camera-to-world 4x4 matrices named
  ``c2w``; world-to-camera matrices are named ``w2c``.
* Equirectangular panoramas are H x W with W = 2H. Pixel centres sit at
  u = (x + 0.5) / W, v = (y + 0.5) / H; longitude lon = (u - 0.5) * 2 pi, latitude
  lat = (0.5 - v) * pi; the viewing direction is
  d = (cos lat sin lon, -sin lat, cos lat cos lon). The centre column looks forward (+z),
  u = 0.75 looks right (+x), the top row looks up (-y).
* A panorama carries ``distance`` (length along the ray); a perspective view carries
  ``depth`` (camera z).
* Images in memory are float32 in [0, 1], [H, W, 3] (numpy) or [B, 3, H, W] (torch).

Importing this package is cheap: it never imports diffusers, gsplat, nvdiffrast or moge.
"""

__version__ = "0.1.0"

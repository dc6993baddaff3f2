"""Perspective cameras inside a panorama: crops, pastes, standard crop sets, rigid poses.

Conventions (DESIGN.md §3):

* OpenCV frames (x right, y down, z forward). ``c2w`` maps camera to world, ``w2c`` the
  reverse; the direction of a transform is always in its name.
* A perspective crop is named by (yaw, pitch, fov) in degrees: yaw turns right (+z towards
  +x), pitch turns up (+z towards -y), fov is the horizontal field of view. Its rotation
  ``R_c2p = R_y(yaw) @ R_x(pitch)`` maps crop-camera coordinates to panorama-camera
  coordinates.
* Pinhole intrinsics K in pixels with the pixel-centre convention of the panorama: pixel
  (i, j) has its centre at (j + 0.5, i + 0.5); an image of width w has cx = w / 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from matrix_world.equirect import equirect_directions, pixel_grid, sample_equirect_directions

# --------------------------------------------------------------------------- rotations


def rotation_yaw(yaw_deg: float, *, dtype=torch.float64) -> Tensor:
    """Rotation about camera y that turns the forward axis right by ``yaw_deg``: [3, 3]."""
    a = math.radians(yaw_deg)
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=dtype)


def rotation_pitch(pitch_deg: float, *, dtype=torch.float64) -> Tensor:
    """Rotation about camera x that turns the forward axis up by ``pitch_deg``: [3, 3]."""
    a = math.radians(pitch_deg)
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]], dtype=dtype)


def rotation_roll(roll_deg: float, *, dtype=torch.float64) -> Tensor:
    """Rotation about camera z (the optical axis) that turns the camera's x axis towards its y axis
    (clockwise as seen on the image, y down) by ``roll_deg``: [3, 3]."""
    a = math.radians(roll_deg)
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=dtype)


def rotation_yaw_pitch_roll(yaw_deg: float, pitch_deg: float, roll_deg: float, *, dtype=torch.float64) -> Tensor:
    """Camera -> panorama rotation ``R_y(yaw) @ R_x(pitch) @ R_z(roll)`` (a crop's rotation, then a roll): [3, 3]."""
    return rotation_yaw(yaw_deg, dtype=dtype) @ rotation_pitch(pitch_deg, dtype=dtype) @ rotation_roll(roll_deg, dtype=dtype)


def rotation_from_yaw_pitch(yaw_deg: float, pitch_deg: float, *, dtype=torch.float64) -> Tensor:
    """Crop camera -> panorama camera rotation ``R_c2p = R_y(yaw) @ R_x(pitch)``: [3, 3]."""
    return rotation_yaw(yaw_deg, dtype=dtype) @ rotation_pitch(pitch_deg, dtype=dtype)


def yaw_pitch_from_direction(direction) -> tuple[float, float]:
    """(yaw, pitch) in degrees of the crop whose optical axis points along ``direction``."""
    x, y, z = (float(v) for v in direction)
    return math.degrees(math.atan2(x, z)), math.degrees(math.atan2(-y, math.hypot(x, z)))


# --------------------------------------------------------------------------- rigid poses


def make_pose(rotation: Tensor, translation: Tensor) -> Tensor:
    """4x4 rigid transform from R [..., 3, 3] and t [..., 3] -> [..., 4, 4]."""
    out = torch.zeros(*rotation.shape[:-2], 4, 4, dtype=rotation.dtype, device=rotation.device)
    out[..., :3, :3] = rotation
    out[..., :3, 3] = translation
    out[..., 3, 3] = 1.0
    return out


def invert_pose(pose: Tensor) -> Tensor:
    """Invert rigid 4x4 transforms [..., 4, 4] (``c2w`` <-> ``w2c``)."""
    rot_t = pose[..., :3, :3].transpose(-1, -2)
    return make_pose(rot_t, -(rot_t @ pose[..., :3, 3:4])[..., 0])


def c2w_to_w2c(c2w: Tensor) -> Tensor:
    """Camera-to-world poses [..., 4, 4] -> world-to-camera poses (gsplat's ``viewmats``)."""
    return invert_pose(c2w)


def w2c_to_c2w(w2c: Tensor) -> Tensor:
    """World-to-camera poses [..., 4, 4] -> camera-to-world poses."""
    return invert_pose(w2c)


def rigidity_error(pose: Tensor) -> Tensor:
    """Largest deviation from a proper rigid transform, per pose [...].

    Checks R^T R = I, det R = +1 and a last row of (0, 0, 0, 1).
    """
    rot = pose[..., :3, :3].to(torch.float64)
    eye = torch.eye(3, dtype=torch.float64, device=pose.device)
    ortho = (rot.transpose(-1, -2) @ rot - eye).abs().amax(dim=(-1, -2))
    det = (torch.linalg.det(rot) - 1.0).abs()
    last = (pose[..., 3, :].to(torch.float64) - torch.tensor([0.0, 0, 0, 1], dtype=torch.float64, device=pose.device)).abs().amax(-1)
    return torch.maximum(torch.maximum(ortho, det), last)


# --------------------------------------------------------------------------- intrinsics


def intrinsics_from_fov(fov_deg: float, width: int, height: int, *, dtype=torch.float64) -> Tensor:
    """Pinhole K [3, 3] for a horizontal FOV in degrees, square pixels, centred principal point."""
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"fov must be in (0, 180) degrees, got {fov_deg}")
    f = 0.5 * width / math.tan(math.radians(fov_deg) / 2.0)
    return torch.tensor([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]], dtype=dtype)


def camera_rays(K: Tensor, width: int, height: int) -> Tensor:
    """Ray through every pixel centre, in camera coordinates with z = 1: [h, w, 3]."""
    px, py = pixel_grid(height, width, device=K.device, dtype=K.dtype)
    x = (px - K[0, 2]) / K[0, 0]
    y = (py - K[1, 2]) / K[1, 1]
    return torch.stack((x, y, torch.ones_like(x)), dim=-1)


def depth_to_distance(depth: Tensor, K: Tensor) -> Tensor:
    """Perspective z-depth [..., h, w] -> distance along each pixel's ray [..., h, w]."""
    h, w = depth.shape[-2:]
    return depth * camera_rays(K.to(depth.dtype), w, h).norm(dim=-1)


def distance_to_depth(distance: Tensor, K: Tensor) -> Tensor:
    """Distance along each pixel's ray [..., h, w] -> perspective z-depth [..., h, w]."""
    h, w = distance.shape[-2:]
    return distance / camera_rays(K.to(distance.dtype), w, h).norm(dim=-1)


# --------------------------------------------------------------------------- crops


@dataclass(frozen=True)
class PerspectiveView:
    """A perspective crop of a panorama: (yaw, pitch, horizontal fov) in degrees, size in pixels."""

    yaw: float
    pitch: float
    fov: float
    width: int
    height: int

    def intrinsics(self, dtype=torch.float64) -> Tensor:
        """K [3, 3] in pixels."""
        return intrinsics_from_fov(self.fov, self.width, self.height, dtype=dtype)

    def rotation(self, dtype=torch.float64) -> Tensor:
        """``R_c2p`` [3, 3]: crop camera -> panorama camera."""
        return rotation_from_yaw_pitch(self.yaw, self.pitch, dtype=dtype)

    def c2w(self, pano_c2w: Tensor | None = None) -> Tensor:
        """Crop camera-to-world [4, 4], given the panorama's camera-to-world (identity by default)."""
        local = make_pose(self.rotation(), torch.zeros(3, dtype=torch.float64))
        if pano_c2w is None:
            return local
        return pano_c2w.to(torch.float64) @ local

    def directions(self, *, device=None, dtype=torch.float32) -> Tensor:
        """Unit ray of every crop pixel in the panorama camera frame: [h, w, 3]."""
        return camera_directions(self.intrinsics(), self.rotation(), self.width, self.height, device=device, dtype=dtype)


def camera_directions(K: Tensor, R_c2p: Tensor, width: int, height: int, *, device=None, dtype=torch.float32) -> Tensor:
    """Unit ray of every pixel of a pinhole camera (K [3, 3], any rotation R_c2p [3, 3]: camera ->
    panorama frame, roll included) in the panorama frame: [h, w, 3]."""
    K, R_c2p = torch.as_tensor(K, dtype=torch.float64), torch.as_tensor(R_c2p, dtype=torch.float64)
    rays = camera_rays(K, width, height)
    rays = rays / rays.norm(dim=-1, keepdim=True)
    return (rays @ R_c2p.T).to(device=device, dtype=dtype)


def crop_perspective(pano: Tensor, view: PerspectiveView, mode: str = "bilinear") -> tuple[Tensor, Tensor, Tensor]:
    """Cut a perspective view out of a panorama.

    pano: Tensor  # [B, C, H, W] or [C, H, W]
    returns (image [B, C, h, w] or [C, h, w], K [3, 3], R_c2p [3, 3])
    """
    K, rot = view.intrinsics(), view.rotation()
    return crop_camera(pano, K, rot, view.width, view.height, mode=mode), K, rot


def project_to_view(directions: Tensor, view: PerspectiveView) -> tuple[Tensor, Tensor, Tensor]:
    """Project panorama-frame directions [..., 3] into a crop.

    returns (px [...], py [...], in_front [...] bool) continuous image coordinates.
    """
    return project_to_camera(directions, view.intrinsics(), view.rotation())


def project_to_camera(directions: Tensor, K: Tensor, R_c2p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Project panorama-frame directions [..., 3] into a pinhole camera (K [3, 3], R_c2p [3, 3]).

    returns (px [...], py [...], in_front [...] bool) continuous image coordinates.
    """
    rot = torch.as_tensor(R_c2p).to(device=directions.device, dtype=directions.dtype)
    K = torch.as_tensor(K).to(device=directions.device, dtype=directions.dtype)
    cam = directions @ rot  # R^T d, row-vector form
    z = cam[..., 2]
    in_front = z > 1e-9
    zs = torch.where(in_front, z, torch.ones_like(z))
    px = K[0, 0] * cam[..., 0] / zs + K[0, 2]
    py = K[1, 1] * cam[..., 1] / zs + K[1, 2]
    return px, py, in_front


def sample_image(image: Tensor, px: Tensor, py: Tensor, mode: str = "bilinear") -> Tensor:
    """Sample a perspective image [B, C, h, w] at continuous coordinates [...] (border-clamped)."""
    h, w = image.shape[-2:]
    gx = px / w * 2.0 - 1.0
    gy = py / h * 2.0 - 1.0
    grid = torch.stack((gx, gy), dim=-1).reshape(1, -1, 1, 2).to(image.dtype)
    grid = grid.expand(image.shape[0], -1, -1, -1)
    out = torch.nn.functional.grid_sample(image, grid, mode=mode, padding_mode="border", align_corners=False)
    return out.reshape(image.shape[0], image.shape[1], *px.shape)


def paste_perspective(
    image: Tensor, view: PerspectiveView, height: int, mode: str = "bilinear"
) -> tuple[Tensor, Tensor]:
    """Paste a perspective image into an empty equirect of the given height (inverse of a crop).

    image: Tensor  # [B, C, h, w] or [C, h, w], with h, w matching ``view``
    returns (pano [B, C, H, 2H] or [C, H, 2H] with zeros outside the view,
             coverage [H, 2H] bool: True where the pixel centre projects inside the image)
    """
    if tuple(image.shape[-2:]) != (view.height, view.width):
        raise ValueError(f"image is {tuple(image.shape[-2:])} but the view is {(view.height, view.width)}")
    return paste_camera(image, view.intrinsics(), view.rotation(), height, mode=mode)


def paste_camera(image: Tensor, K: Tensor, R_c2p: Tensor, height: int, mode: str = "bilinear") -> tuple[Tensor, Tensor]:
    """Paste a pinhole image (K [3, 3], any rotation R_c2p [3, 3]: camera -> panorama frame) into an
    empty equirect of the given height. The one paste: :func:`paste_perspective` is this for a
    (yaw, pitch, fov) view.

    image: Tensor  # [B, C, h, w] or [C, h, w]
    returns (pano [B, C, H, 2H] or [C, H, 2H] with zeros outside the image,
             coverage [H, 2H] bool: True where the pixel centre projects inside the image)
    """
    squeeze = image.dim() == 3
    if squeeze:
        image = image[None]
    h, w = image.shape[-2:]
    dirs = equirect_directions(height, device=image.device, dtype=torch.float64)
    px, py, in_front = project_to_camera(dirs, K, R_c2p)
    coverage = in_front & (px >= 0) & (px <= w) & (py >= 0) & (py <= h)
    out = sample_image(image, px, py, mode=mode) * coverage.to(image.dtype)
    return (out[0] if squeeze else out), coverage


def crop_camera(pano: Tensor, K: Tensor, R_c2p: Tensor, width: int, height: int, mode: str = "bilinear") -> Tensor:
    """A pinhole view (K [3, 3], any rotation R_c2p [3, 3], roll included) cut out of a panorama.

    pano: Tensor  # [B, C, H, W] or [C, H, W]  ->  [B, C, height, width] or [C, height, width]
    """
    dirs = camera_directions(K, R_c2p, width, height, device=pano.device, dtype=torch.float64)
    return sample_equirect_directions(pano, dirs, mode=mode)


# --------------------------------------------------------------------------- standard crop sets


def crops_12(size: int = 512, fov: float = 90.0) -> list[PerspectiveView]:
    """The 12 views used for splat optimisation: yaw 0/90/180/270 x pitch 0/+45/-45, FOV 90."""
    return [PerspectiveView(yaw, pitch, fov, size, size) for pitch in (0.0, 45.0, -45.0) for yaw in (0.0, 90.0, 180.0, 270.0)]


CUBE_FACE_NAMES = ("front", "right", "back", "left", "up", "down")


def cube_faces(size: int = 512) -> list[PerspectiveView]:
    """The 6 cube faces (front, right, back, left, up, down), FOV 90 each."""
    angles = [(0.0, 0.0), (90.0, 0.0), (180.0, 0.0), (270.0, 0.0), (0.0, 90.0), (0.0, -90.0)]
    return [PerspectiveView(yaw, pitch, 90.0, size, size) for yaw, pitch in angles]


def icosahedron_directions() -> Tensor:
    """The 12 unit vertex directions of a regular icosahedron: [12, 3] (float64).

    Vertices are the cyclic permutations of (0, +-1, +-phi), normalised. None sits on a pole,
    so every view has a well-defined yaw.
    """
    phi = (1.0 + math.sqrt(5.0)) / 2.0
    verts = []
    for a in (-1.0, 1.0):
        for b in (-phi, phi):
            verts += [(0.0, a, b), (a, b, 0.0), (b, 0.0, a)]
    out = torch.tensor(verts, dtype=torch.float64)
    return out / out.norm(dim=-1, keepdim=True)


def icosahedron_views(size: int = 768, fov: float = 100.0) -> list[PerspectiveView]:
    """The 12 views at the icosahedron vertices used for panoramic depth (FOV 100 by default).

    12 views of 100 degrees cover the whole sphere with overlap (the largest angle from any
    direction to its nearest vertex is 37.4 degrees, under the 50 degree half-FOV).
    """
    return [PerspectiveView(*yaw_pitch_from_direction(d), fov, size, size) for d in icosahedron_directions()]

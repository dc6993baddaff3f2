"""Reading and writing images, arrays and videos; atomic writes.

Every artifact is written to a temporary name in the same folder and renamed when complete,
so a killed run never leaves a half-written file (DESIGN.md §1). Write failures (disk full,
permissions, a folder in the way) surface as :class:`OutputError` with one clear line.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from matrix_world.errors import InputError, one_line, short_error


class OutputError(OSError):
    """Writing an output failed (disk full, no permission, a path that is a folder or file)."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds.

    The temporary name keeps the suffix (writers that pick the format from it still work).
    On any error the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual mode
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise OutputError(f"writing {path} failed: {exc.strerror or exc}") from exc
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes atomically."""
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 text atomically."""
    write_bytes(path, text.encode("utf-8"))


COMPRESS_MAX_BYTES = 8 << 20  # larger members are stored (deflate runs at ~30 MB/s: 6 s for a 480p scaffold)


def compresses(value: np.ndarray) -> bool:
    """The .npz member rule of :func:`save_npz`: deflate small arrays and boolean masks, store the rest.

    A boolean mask deflates ~100x at ~400 MB/s (level 1); large uint8 / float frames deflate
    only 2-6x at 30-100 MB/s, which made the 480p scaffold stage spend 6 s of its 12 s compressing.
    """
    return value.nbytes <= COMPRESS_MAX_BYTES or value.dtype == np.bool_


def save_npz(path: str | os.PathLike, compressed: bool | None = None, **arrays: np.ndarray) -> None:
    """Save arrays into one .npz atomically; the same arrays always give the same bytes.

    compressed: None (the default) applies :func:`compresses` per member (large frames are
    stored, masks and small arrays deflated at level 1); True / False deflates / stores every
    member. Either way ``np.load`` (:func:`load_npz`) reads the file, and files written
    with any setting (older runs deflated everything) read back the same.
    (``np.savez`` stamps each member with the current time, so a rerun would change every
    artifact hash; here the members carry a fixed date.)
    """
    import zipfile

    with atomic_write(path) as tmp:
        with zipfile.ZipFile(tmp, "w", allowZip64=True) as zf:
            for name, value in arrays.items():
                value = np.asanyarray(value)
                deflate = compresses(value) if compressed is None else compressed
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
                if deflate and compressed is None:  # level 1: masks shrink as much as at 6, twice as fast
                    setattr(info, "compress_level" if hasattr(info, "compress_level") else "_compresslevel", 1)  # 3.13+ / 3.8-3.12
                with zf.open(info, "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, value, allow_pickle=False)


def load_npz(path: str | os.PathLike, keys: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Load an .npz; raise InputError when it is unreadable or lacks a required key."""
    try:
        with np.load(path, allow_pickle=False) as data:
            out = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise InputError(f"cannot read {path} as .npz ({short_error(exc)}); expected an .npz archive of arrays") from None
    missing = [k for k in keys if k not in out]
    if missing:
        raise InputError(f"{path} lacks the array(s) {missing}; it has {sorted(out)}")
    return out


def to_uint8(image):
    """Float [0, 1] or uint8 image(s) -> uint8 (rounded, clipped): numpy in, numpy out; a torch
    tensor stays a tensor on its device (same float32 arithmetic, so the same bytes)."""
    if not isinstance(image, np.ndarray) and type(image).__module__.startswith("torch"):
        import torch

        if image.dtype == torch.uint8:
            return image
        return image.to(torch.float32).clamp(0.0, 1.0).mul(255.0).add(0.5).to(torch.uint8)
    if image.dtype == np.uint8:
        return image
    return (np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def check_image_file(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of an image file; InputError when it is missing, truncated or corrupt.

    JPEG and PNG files (recognised by their first bytes, whatever the suffix) are decoded
    completely with Pillow, truncated data being an error (``ImageFile.LOAD_TRUNCATED_IMAGES``
    is forced off for the call): libjpeg, which OpenCV uses, fills the missing part of a
    truncated JPEG with grey and only prints a warning. This catches truncation and broken
    PNG data streams / CRCs; damage inside a complete JPEG that libjpeg can still decode is
    not detectable. Other formats are decoded with OpenCV.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image {path} does not exist (expected a PNG/JPEG/... file)")
    size = _check_jpeg_png(path)
    if size is None:
        import cv2

        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise InputError(f"cannot decode {path} as an image (expected a PNG/JPEG/TIFF/WebP file)")
        size = int(raw.shape[0]), int(raw.shape[1])
    return size


def _check_jpeg_png(path: Path) -> tuple[int, int] | None:
    """(height, width) of a complete JPEG / PNG file, None for other formats; InputError when
    the file is truncated or corrupt (see :func:`check_image_file`)."""
    with open(path, "rb") as f:
        head = f.read(8)
    kind = "JPEG" if head.startswith(_JPEG_MAGIC) else "PNG" if head == _PNG_MAGIC else None
    if kind is None:
        return None
    from PIL import Image, ImageFile

    keep = ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    Image.MAX_IMAGE_PIXELS = None  # our own limit below, checked on the header before decoding
    try:
        with Image.open(path) as img:
            width, height = img.size
            check_image_pixels(path, width, height)
            img.load()
    except InputError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        reason = one_line(exc) or type(exc).__name__
        raise InputError(f"image {path} is a truncated or corrupt {kind} file ({reason}); "
                         f"expected a complete {kind} file (re-export or re-download it)") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS = keep
    return height, width


MAX_IMAGE_PIXELS_ENV = "MATRIX_WORLD_MAX_IMAGE_PIXELS"
DEFAULT_MAX_IMAGE_PIXELS = 8192 * 16384  # the largest panorama a run makes (--panorama-height 8192)
IMAGE_BYTES_PER_PIXEL = 28  # decoded uint8 + float32 RGB + the resized copy of the pipeline


def max_image_pixels() -> int:
    """The pixel limit of input images: ``MATRIX_WORLD_MAX_IMAGE_PIXELS`` or 8192 x 16384."""
    text = os.environ.get(MAX_IMAGE_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_IMAGE_PIXELS
    if not text.isdigit() or int(text) < 1:
        raise InputError(f"{MAX_IMAGE_PIXELS_ENV}={text!r}; expected a positive whole number of pixels")
    return int(text)


def check_image_pixels(path: str | os.PathLike, width: int, height: int) -> None:
    """An image of ``width`` x ``height`` (read from its header) may be decoded: at most
    :func:`max_image_pixels` pixels (a decompression bomb, or a panorama far beyond any size a
    run uses, is refused before it is decoded) and it fits in the available memory."""
    from matrix_world.runtime import check_memory

    pixels, limit = int(width) * int(height), max_image_pixels()
    if pixels > limit:
        raise InputError(f"image {path} is {width}x{height} ({pixels / 1e6:.0f} megapixels), over the limit of "
                         f"{limit / 1e6:.0f} megapixels; expected a smaller image, or raise the limit with "
                         f"{MAX_IMAGE_PIXELS_ENV}={pixels}")
    check_memory(pixels * IMAGE_BYTES_PER_PIXEL, f"decoding image {path} ({width}x{height})", "a smaller image")


def read_image(path: str | os.PathLike, *, strict: bool = False) -> np.ndarray:
    """Read an image file as float32 RGB [H, W, 3] in [0, 1].

    With ``strict=False`` grayscale is replicated to RGB, alpha is dropped and 16-bit
    images are scaled by 1/65535. With ``strict=True`` anything but 8-bit RGB raises
    InputError naming what was found and what is expected.
    """
    import cv2

    path = Path(path)
    if not path.is_file():
        raise InputError(f"image {path} does not exist (expected a PNG/JPEG/... file)")
    _check_jpeg_png(path)  # truncated / corrupt JPEG and PNG files: OpenCV would fill them with grey
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise InputError(f"cannot decode {path} as an image (expected a PNG/JPEG/TIFF/WebP file)")
    depth = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(raw.dtype)
    channels = 1 if raw.ndim == 2 else raw.shape[2]
    if strict and (raw.dtype != np.uint8 or channels != 3):
        raise InputError(
            f"{path} is a {channels}-channel {raw.dtype} image; expected 8-bit RGB (3 channels)"
        )
    if depth is None:
        if raw.dtype.kind != "f":
            raise InputError(f"{path} has unsupported pixel type {raw.dtype}; expected 8- or 16-bit")
        image = raw.astype(np.float32)
    else:
        image = raw.astype(np.float32) / depth
    if channels == 1:
        image = np.repeat(image.reshape(image.shape[0], image.shape[1], 1), 3, axis=2)
    elif channels == 4:
        image = image[:, :, :3]
    elif channels != 3:
        raise InputError(f"{path} has {channels} channels; expected gray, RGB or RGBA")
    image = image[:, :, ::-1]  # OpenCV reads BGR
    return np.ascontiguousarray(np.clip(image, 0.0, 1.0), dtype=np.float32)


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an RGB image (float [0, 1] or uint8, [H, W, 3]) or a gray one [H, W] atomically."""
    import cv2

    data = to_uint8(np.asarray(image))
    if data.ndim == 3:
        data = data[:, :, ::-1]
    with atomic_write(path) as tmp:
        if not cv2.imwrite(str(tmp), np.ascontiguousarray(data)):
            raise OutputError(f"could not encode an image for {path}")


def write_video(path: str | os.PathLike, frames, fps: float = 16.0, quality: int = 8,
                preset: str = "medium") -> None:
    """Write frames [F, H, W, 3] (uint8 or float [0, 1]) as an H.264 .mp4 atomically.

    frames: one array, or an iterable of chunks [n, H, W, 3] encoded as they come (e.g. from a
    queue fed while the frames are made). Odd sizes are padded by one pixel (H.264 with yuv420p
    needs even sizes). Gray frames [F, H, W] are encoded as gray input (no RGB copy). preset:
    x264's speed / size trade-off (``ultrafast`` encodes a 480p clip ~7x faster than ``medium``,
    files ~2.5x larger); the OpenCV fallback (no ffmpeg) has a single speed.
    """
    chunks = [frames] if isinstance(frames, np.ndarray) else frames
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401  (the ffmpeg binary)
    except ImportError:
        imageio = None
    with atomic_write(path) as tmp:
        writer = None
        try:
            for chunk in chunks:
                data = _even(to_uint8(np.asarray(chunk)))
                if writer is None and imageio is None:  # no ffmpeg: OpenCV's MPEG-4 Part 2 encoder (plays everywhere)
                    writer = _Cv2Writer(tmp, data, fps)
                elif writer is None:
                    writer = imageio.get_writer(str(tmp), format="FFMPEG", fps=fps, codec="libx264", quality=quality,
                                                macro_block_size=1, pixelformat="yuv420p",
                                                ffmpeg_params=["-preset", preset])
                for frame in data:
                    writer.append_data(frame)
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            raise ValueError(f"no frames to write into {path}")


def _even(data: np.ndarray) -> np.ndarray:
    """Pad [F, H, W(, 3)] by one edge pixel where H or W is odd."""
    pad = ((0, 0), (0, data.shape[1] % 2), (0, data.shape[2] % 2)) + ((0, 0),) * (data.ndim - 3)
    return np.pad(data, pad, mode="edge") if any(p[1] for p in pad) else data


class _Cv2Writer:
    """OpenCV's mp4v writer with imageio's append_data / close."""

    def __init__(self, path: Path, first: np.ndarray, fps: float):
        import cv2

        self.gray = first.ndim == 3
        self.writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), float(fps),
                                      (first.shape[2], first.shape[1]), isColor=not self.gray)
        if not self.writer.isOpened():
            raise OutputError(f"OpenCV could not open a video writer for {path} (install imageio-ffmpeg)")

    def append_data(self, frame: np.ndarray) -> None:
        self.writer.write(np.ascontiguousarray(frame if self.gray else frame[:, :, ::-1]))

    def close(self) -> None:
        self.writer.release()


@contextlib.contextmanager
def in_background(*jobs: Callable[[], object]) -> Iterator[None]:
    """Run ``jobs`` (no-argument callables, e.g. preview writers) in threads while the block runs.

    The block's end waits for every job; the first job error is raised there (after all
    jobs ended), so a stage using this is never committed before its files are complete.
    Encoders (ffmpeg subprocess, OpenCV, zlib) release the GIL: the jobs run in parallel.
    """
    import threading

    errors: list[BaseException] = []

    def run(job):
        try:
            job()
        except BaseException as exc:  # re-raised in the caller's thread below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(job,), daemon=True) for job in jobs]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        for t in threads:
            t.join()
    if errors:
        raise errors[0]


def _decoded_frames(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """The frames of a video file, uint8 [H, W, 3] each, in order: imageio's FFMPEG plugin (imageio-ffmpeg,
    a core dependency), else OpenCV's decoder where that plugin is missing (as :func:`write_video` falls
    back to OpenCV's encoder)."""
    import imageio.v2 as imageio

    try:
        reader = imageio.get_reader(str(path), format="FFMPEG")
    except ImportError:
        import cv2

        capture = cv2.VideoCapture(str(path))
        if not capture.isOpened():
            raise OSError("OpenCV cannot open it (and imageio's FFMPEG plugin is not installed)") from None
        try:
            while True:
                ok, bgr = capture.read()
                if not ok:
                    return
                yield np.ascontiguousarray(bgr[..., ::-1])
        finally:
            capture.release()
    try:
        for frame in reader:  # type: ignore[attr-defined]  # imageio stubs: __iter__ -> Array
            yield np.asarray(frame)[..., :3]
    finally:
        reader.close()


def read_video(path: str | os.PathLike, indices: Sequence[int] | None = None) -> np.ndarray:
    """Read a video file as uint8 frames [F, H, W, 3]. The one video decoder of the project.

    indices: the frames wanted, in the order wanted (repeats allowed); None reads all of them.
    Decoding stops after the last frame wanted. A file that cannot be decoded, or a requested
    frame it does not have, raises InputError.
    """
    order = None if indices is None else [int(i) for i in indices]
    if order is not None and (not order or min(order) < 0):
        raise InputError(f"frames of {path} were requested by index; expected one or more indices >= 0, "
                         f"got {order[:8]}")
    wanted = None if order is None else set(order)
    last = None if order is None else max(order)
    frames: dict[int, np.ndarray] = {}
    decoded = 0
    try:
        for i, frame in enumerate(_decoded_frames(path)):
            decoded = i + 1
            if wanted is None or i in wanted:
                frames[i] = frame
            if last is not None and i >= last:
                break
    except (OSError, RuntimeError, ValueError) as exc:
        raise InputError(f"cannot read {path} as a video: {one_line(exc)}") from None
    order = list(range(decoded)) if order is None else order
    missing = [i for i in order if i not in frames]
    if missing:
        raise InputError(f"{path} has {decoded} readable frames; frame {missing[0]} was requested")
    if not order:
        raise InputError(f"{path} has no readable frame; expected a video of one frame or more")
    return np.stack([frames[i] for i in order])  # [F, H, W, 3] uint8


def video_length(path: str | os.PathLike) -> int:
    """Number of frames of a video (decodes it: exact, not the container's estimate)."""
    try:
        return sum(1 for _ in _decoded_frames(path))
    except (OSError, RuntimeError, ValueError) as exc:
        raise InputError(f"cannot read {path} as a video: {one_line(exc)}") from None


def video_fps(path: str | os.PathLike) -> float | None:
    """Frame rate a video file declares (None when it declares none)."""
    import imageio.v2 as imageio

    try:
        try:
            reader = imageio.get_reader(str(path), format="FFMPEG")
        except ImportError:  # no FFMPEG plugin: OpenCV, as _decoded_frames
            import cv2

            capture = cv2.VideoCapture(str(path))
            fps = capture.get(cv2.CAP_PROP_FPS) if capture.isOpened() else None
            capture.release()
        else:
            try:
                fps = reader.get_meta_data().get("fps")
            finally:
                reader.close()
    except (OSError, RuntimeError, ValueError) as exc:
        raise InputError(f"cannot read {path} as a video: {one_line(exc)}") from None
    return float(fps) if fps and fps > 0 else None


# --------------------------------------------------------------------------- distance maps

DISTANCE_RULE = ("expected a float16/32/64 [H, W] array of distances > 0 along each pixel's ray "
                 "(+inf marks sky), as .npy or as .npz with a 'distance' array")


def read_distance(path: str | os.PathLike, expected_shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a panorama distance map -> (distance [H, W] float32, sky [H, W] bool). The one reader.

    The rule (every reader of a user's distance map goes through here):

    * the file is a ``.npy`` array, or an ``.npz`` archive (recognised by content) with a
      ``distance`` array and optionally ``sky`` (bool [H, W]: True = sky, whatever the
      distance says there) and ``valid`` (bool [H, W]: False = no geometry, treated as sky)
      -- a run's own ``depth.npz`` reads back as it was written;
    * the dtype is float16, float32 or float64; integer, bool, complex, structured and
      Python-object arrays are refused (an integer map is usually a quantised depth image of
      unknown scale: convert it to float distances first); float64 values beyond float32's
      range are refused;
    * the array is 2-D [H, W] and, when ``expected_shape`` is given (the panorama's
      (H, W)), exactly that shape;
    * NaN is refused (its count is named), values <= 0 and -inf are refused, +inf is sky;
      at least one pixel must be finite.

    ``distance`` holds +inf exactly where ``sky`` is True.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"distance file {path} does not exist ({DISTANCE_RULE})")
    try:
        loaded = np.load(path, allow_pickle=False)
        masks: dict[str, np.ndarray] = {}
        if isinstance(loaded, np.lib.npyio.NpzFile):  # e.g. a run's depth.npz
            with loaded:
                if "distance" not in loaded.files:
                    raise InputError(f"{path} has no 'distance' array (it has {loaded.files}); {DISTANCE_RULE}")
                masks = {k: np.asarray(loaded[k]) for k in ("sky", "valid") if k in loaded.files}
                loaded = loaded["distance"]
        d = np.asarray(loaded)
    except InputError:
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise InputError(f"distance {path} holds a Python-object array; {DISTANCE_RULE}") from None
        raise InputError(f"cannot read {path} as .npy/.npz ({one_line(exc)}); {DISTANCE_RULE}") from None
    except (OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise InputError(f"cannot read {path} as .npy/.npz ({one_line(exc)}); {DISTANCE_RULE}") from None
    _check_distance_dtype(d, f"distance {path}")
    if d.ndim != 2:
        raise InputError(f"distance {path} has shape {d.shape}; expected a 2-D [H, W] array")
    if expected_shape is not None and d.shape != tuple(expected_shape):
        raise InputError(f"distance {path} is {d.shape[0]}x{d.shape[1]} (H x W) but the panorama is "
                         f"{expected_shape[0]}x{expected_shape[1]}; expected the same size")
    sky = np.zeros(d.shape, bool)
    for name, value in masks.items():
        if value.shape != d.shape or value.dtype.kind not in "biu":
            raise InputError(f"{path}: '{name}' is {value.dtype} {value.shape} but 'distance' is {d.shape}; "
                             "expected a bool mask of the same shape")
        sky |= value.astype(bool) if name == "sky" else ~value.astype(bool)
    return check_distance(d, f"distance {path}", sky=sky)


def _check_distance_dtype(d: np.ndarray, what: str) -> None:
    if d.dtype.kind != "f" or d.dtype.itemsize > 8:
        why = " (integers are usually a quantised depth image of unknown scale; convert to float distances)" \
            if d.dtype.kind in "iu" else ""
        raise InputError(f"{what} has dtype {d.dtype}{why}; expected float32 (or float16/float64) "
                         "distances > 0, +inf = sky")


def check_distance(d: np.ndarray, what: str, sky: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The distance rule on an array of any shape ([H, W], or [F, H, W] for a clip): float, NaN
    refused (its count named), values <= 0 and -inf refused, +inf = sky, not all sky.

    sky: bool of the same shape, True = sky whatever the array says there. Returns
    (distance float32 with +inf exactly where sky, sky bool). ``what`` names the array in errors.
    """
    d = np.asarray(d)
    _check_distance_dtype(d, what)
    sky = np.zeros(d.shape, bool) if sky is None else np.asarray(sky, bool).copy()
    with np.errstate(over="ignore", invalid="ignore"):
        out = d.astype(np.float32)
    overflow = int((np.isfinite(d) & ~np.isfinite(out)).sum())
    if overflow:
        raise InputError(f"{what} has {overflow} value(s) beyond float32's range (max {float(np.nanmax(d)):.4g}); "
                         "expected distances > 0 in metres or scene units, +inf = sky")
    out[sky] = np.inf
    nan = int(np.isnan(out).sum())
    if nan:
        raise InputError(f"{what} has {nan} NaN value(s); expected distances > 0 (+inf marks sky; "
                         "NaN is not sky: mark sky pixels +inf)")
    bad = int((out <= 0).sum())  # includes -inf
    if bad:
        raise InputError(f"{what} has {bad} value(s) <= 0 (min {float(out.min()):.4g}); "
                         "expected distances > 0 (+inf marks sky)")
    sky |= np.isposinf(out)
    if sky.all():
        raise InputError(f"{what} is all +inf (sky); expected finite distances > 0")
    return out, sky


def read_json(path: str | os.PathLike, *, what: str, expected: str) -> object:
    """A JSON file's value, the one reader of user JSON: unreadable bytes, invalid JSON and
    JSON nested too deeply for the parser (RecursionError) are an :class:`InputError` naming
    ``what`` (the file's role) and ``expected`` (what it should hold)."""
    import json

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {what} {path} ({short_error(exc)}); expected {expected}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{what} {path} is not valid JSON ({exc}); expected {expected}") from None
    except RecursionError:
        raise InputError(f"{what} {path} is JSON nested too deeply to read; expected {expected}") from None

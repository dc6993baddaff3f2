"""The run directory: one folder per run, resumable stages, and ``manifest.json``.

Layout and rules (DESIGN.md §1)::

    <out>/manifest.json          inputs, full config, seed, backend per stage, package
                                 versions, timings, artifact hashes (sha256)
    <out>/<artifacts>            panorama.png, depth.npz, trajectory.json, scaffold.npz, ...
    <out>/segments/<name>/       sub-runs (chained exploration), each a RunDir of its own

A stage has a name, a JSON-able config, the files it reads (``inputs``) and the files it
writes (``outputs``, paths relative to the run directory). Its *config hash* is the sha256
of the canonical JSON of (name, config, sha256 of every input). A stage whose manifest
record has the same hash and whose outputs all exist with the recorded sizes is skipped.

Stage outputs are written into a hidden staging folder ``<out>/.staging-<name>/`` (use
``stage.path(name)``) and moved into place only when the whole stage succeeds, after which
the manifest is rewritten atomically. A stage that fails or is killed leaves its previous
outputs and manifest record untouched, and its staging folder is removed (at the latest
when the stage runs again): nothing half-written ever sits among the artifacts. Files a
rerun of a stage no longer writes (e.g. an optional export) are deleted as stale.

Usage::

    run = RunDir(out, seed=0)
    run.set_inputs(panorama="pano.png")
    with run.stage("scaffold", config=cfg, inputs=["trajectory.json"], files={"panorama": pano_path},
                   outputs=["scaffold.npz"], backend="cpu") as st:
        if not st.done:
            save_npz(st.path("scaffold.npz"), rgb=..., mask=...)
    # or, function style:
    run.run_stage("scaffold", cfg, ["scaffold.npz"], lambda st: ..., inputs=[...])

Not safe for two processes writing the same run directory at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from matrix_world.errors import InputError
from matrix_world.io import OutputError, write_text

MANIFEST = "manifest.json"
FORMAT = "matrix_world.run/1"
# Distributions whose versions the manifest records when installed (read from metadata only).
VERSION_PACKAGES = ("matrix_world", "torch", "numpy", "diffusers", "transformers", "peft", "accelerate",
                    "gsplat", "diffrp-nvdiffrast", "dlr-moge", "trimesh", "opencv-python-headless",
                    "imageio", "imageio-ffmpeg", "safetensors", "scipy")


# --------------------------------------------------------------------------- hashing


def _jsonable(value: Any) -> Any:
    """Config values -> plain JSON types (dataclasses, paths, numpy/torch scalars, tuples)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # JSON has no inf/nan
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalar
        return _jsonable(value.item())
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    raise TypeError(f"config value {value!r} of type {type(value).__name__} is not JSON-able")


def canonical_json(value: Any) -> str:
    """Sorted, compact JSON used for hashing (floats use Python's exact repr)."""
    return json.dumps(_jsonable(value), sort_keys=True, separators=(",", ":"), allow_nan=False)


def config_hash(value: Any) -> str:
    """sha256 hex of the canonical JSON of ``value``."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 hex of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def package_versions(packages: Sequence[str] = VERSION_PACKAGES) -> dict[str, str]:
    """Python and installed package versions, read from metadata (nothing is imported)."""
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- stages


class Stage:
    """One stage of a run; made by :meth:`RunDir.stage`.

    done: True when a finished record with the same config hash exists and its outputs
        are all present: the caller skips the work.
    backend: the backend that actually ran (set it when ``auto`` resolved to something).
    info: extra JSON-able facts to record (e.g. frame count, chosen device).
    """

    def __init__(self, run: RunDir, name: str, config: dict, inputs: dict, outputs: list[str],
                 backend: str | None, digest: str, done: bool):
        self.run = run
        self.name = name
        self.config = config
        self.inputs = inputs
        self.outputs = outputs
        self.backend = backend
        self.config_hash = digest
        self.done = done
        self.info: dict = {}
        self.staging = run.path / f".staging-{name}"

    def path(self, output: str) -> Path:
        """Where to write ``output`` (a declared output) while the stage runs.

        Returns the final path when the stage is already done (to read it).
        """
        if output not in self.outputs:
            raise ValueError(f"stage {self.name!r} did not declare output {output!r} (declared: {self.outputs})")
        if self.done:
            return self.run.path / output
        target = self.staging / output
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def final_path(self, output: str) -> Path:
        """Where ``output`` will live in the run directory."""
        return self.run.path / output


class RunDir:
    """A run directory with ``manifest.json`` (see the module docstring).

    path: the folder (created on the first write; it must not be a file).
    seed: recorded in the manifest (None keeps what the manifest has).
    force: rerun every stage even when its record matches.
    """

    def __init__(self, path: str | os.PathLike, *, seed: int | None = None, force: bool = False):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"output folder {self.path} is a file; expected a folder (created if missing)")
        self.force = force
        self.manifest = self._load_manifest()
        if seed is not None:
            self.manifest["seed"] = int(seed)
        self._run_record: dict[str, Any] = {"id": time.time_ns(), "started": _now(), "argv": list(sys.argv), "ran": [], "skipped": []}
        self._hash_cache: dict[tuple, str] = {}

    def _sha256(self, path: str | os.PathLike) -> str:
        """file_sha256 cached per (path, size, mtime) for this RunDir object."""
        stat = os.stat(path)
        key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in self._hash_cache:
            self._hash_cache[key] = file_sha256(path)
        return self._hash_cache[key]

    # ----------------------------------------------------------------- manifest

    def _load_manifest(self) -> dict:
        empty: dict[str, Any] = {"format": FORMAT, "created": _now(), "seed": None, "inputs": {}, "config": {}, "backends": {},
                 "versions": {}, "timings": {}, "artifacts": {}, "stages": {}, "segments": {}, "runs": []}
        file = self.path / MANIFEST
        if not file.is_file():
            return empty
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{file} is unreadable ({exc}); delete it or choose another output folder") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise InputError(f"{file} is not a matrix_world run manifest (format {FORMAT}); choose another output folder")
        return {**empty, **data}

    def write_manifest(self) -> None:
        """Rewrite ``manifest.json`` atomically with the current versions and this run's record."""
        self.manifest["updated"] = _now()
        self.manifest["versions"] = package_versions()
        runs = [r for r in self.manifest["runs"] if r.get("id") != self._run_record["id"]]
        self.manifest["runs"] = (runs + [self._run_record])[-20:]
        write_text(self.path / MANIFEST, json.dumps(_jsonable(self.manifest), indent=1, sort_keys=False) + "\n")

    @property
    def seed(self) -> int | None:
        return self.manifest.get("seed")

    def set_inputs(self, **files: str | os.PathLike | None) -> dict:
        """Record user input files (absolute path, sha256, size) under ``inputs``; returns them."""
        recorded = {}
        for key, file in files.items():
            if file is None:
                continue
            file = Path(file)
            if not file.is_file():
                raise InputError(f"input {key} {file} does not exist")
            recorded[key] = {"path": str(file.resolve()), "sha256": self._sha256(file), "bytes": file.stat().st_size}
        self.manifest["inputs"].update(recorded)
        return recorded

    # ----------------------------------------------------------------- stages

    def _input_hashes(self, inputs: Sequence[str], files: dict | None) -> dict[str, str]:
        """{key: sha256} of a stage's inputs: the part of the config hash that tracks contents.

        inputs: run artifacts (paths relative to the run folder; hash from the manifest).
        files: {key: path} of files outside the run, keyed by name so that moving a file
            does not rerun the stage.
        """
        out = {}
        for rel in inputs:
            rel = os.fspath(rel)
            file = self.path / rel
            if not file.is_file():
                raise InputError(f"stage input {rel} does not exist in {self.path}")
            art = self.manifest["artifacts"].get(rel)
            same = art is not None and file.stat().st_size == art.get("bytes")
            out[rel] = art["sha256"] if same else self._sha256(file)
        for key, path in (files or {}).items():
            if path is None:
                continue
            if not Path(path).is_file():
                raise InputError(f"input {key} {path} does not exist")
            out[f"file:{key}"] = self._sha256(path)
        return out

    def _outputs_present(self, record: dict) -> bool:
        for rel in record.get("outputs", []):
            art = self.manifest["artifacts"].get(rel)
            file = self.path / rel
            if art is None or not file.is_file() or file.stat().st_size != art.get("bytes"):
                return False
        return True

    @contextlib.contextmanager
    def stage(self, name: str, config: dict | Any, *, outputs: Sequence[str], inputs: Sequence[str] = (),
              files: dict | None = None, backend: str | None = None) -> Iterator[Stage]:
        """Run (or skip) one stage; see the module docstring.

        config: JSON-able (dataclasses allowed). outputs: paths relative to the run folder.
        inputs: run artifacts (relative paths) and files: {key: path outside the run}; their
            contents join the config hash, so a changed input reruns the stage.
        backend: the backend name recorded for this stage (the Stage may update it).
        """
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"invalid stage name {name!r}")
        outputs = [os.fspath(o) for o in outputs]
        for rel in outputs:
            if Path(rel).is_absolute() or ".." in Path(rel).parts or rel == MANIFEST:
                raise ValueError(f"stage output {rel!r} must be a relative path inside the run directory")
        config = _jsonable(config)
        input_hashes = self._input_hashes(inputs, files)
        digest = config_hash({"stage": name, "config": config, "inputs": input_hashes, "outputs": sorted(outputs)})
        record = self.manifest["stages"].get(name)
        done = (not self.force and record is not None and record.get("status") == "done"
                and record.get("config_hash") == digest and self._outputs_present(record))
        st = Stage(self, name, config, input_hashes, outputs, backend if not done else record.get("backend"), digest, done)
        if done:
            yield st
            self._run_record["skipped"].append(name)
            self.write_manifest()
            return

        created = self._make_folder()
        self._clear_staging(st.staging)
        started, t0 = _now(), time.perf_counter()
        try:
            yield st
            missing = [rel for rel in outputs if not (st.staging / rel).is_file()]
            if missing:
                raise RuntimeError(f"stage {name!r} finished without writing {missing}")
            self._commit(st, started, time.perf_counter() - t0)
        finally:
            self._clear_staging(st.staging)
            if created and not any(self.path.iterdir()):
                self.path.rmdir()  # a run that failed in its first stage leaves no folder behind

    def run_stage(self, name: str, config: dict | Any, outputs: Sequence[str], fn: Callable[[Stage], Any], *,
                  inputs: Sequence[str] = (), files: dict | None = None, backend: str | None = None) -> Stage:
        """Function style: call ``fn(stage)`` unless the stage is done; returns the Stage."""
        with self.stage(name, config, outputs=outputs, inputs=inputs, files=files, backend=backend) as st:
            if not st.done:
                fn(st)
        return st

    def _make_folder(self) -> bool:
        """Create the run folder; True when it did not exist before."""
        if self.path.is_dir():
            return False
        try:
            self.path.mkdir(parents=True)
        except OSError as exc:
            raise OutputError(f"cannot create the output folder {self.path}: {exc.strerror or exc}") from exc
        return True

    def _clear_staging(self, staging: Path) -> None:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)

    def _commit(self, st: Stage, started: str, seconds: float) -> None:
        """Move staged outputs into place, hash them and rewrite the manifest."""
        artifacts = {}
        for rel in st.outputs:
            staged = st.staging / rel
            artifacts[rel] = {"sha256": file_sha256(staged), "bytes": staged.stat().st_size, "stage": st.name}
        if self.manifest["stages"].pop(st.name, None) is not None:
            self.write_manifest()  # killed while moving -> no stale "done" record over mixed outputs
        try:
            for rel in st.outputs:
                final = self.path / rel
                if final.is_dir():
                    raise OutputError(f"cannot write {final}: a folder is in the way")
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(st.staging / rel, final)
        except OSError as exc:
            raise OutputError(f"moving the outputs of stage {st.name!r} into {self.path} failed: {exc}") from exc
        # outputs of an earlier version of this stage that it no longer writes: stale, removed
        for rel, art in list(self.manifest["artifacts"].items()):
            if art.get("stage") == st.name and rel not in artifacts:
                self.manifest["artifacts"].pop(rel)
                (self.path / rel).unlink(missing_ok=True)
        self.manifest["artifacts"].update(artifacts)
        self.manifest["stages"][st.name] = {
            "status": "done", "config_hash": st.config_hash, "config": st.config, "inputs": st.inputs,
            "backend": st.backend, "started": started, "seconds": round(seconds, 4),
            "outputs": list(st.outputs), "info": _jsonable(st.info)}
        self.manifest["config"][st.name] = st.config
        self.manifest["backends"][st.name] = st.backend
        self.manifest["timings"][st.name] = round(seconds, 4)
        self._run_record["ran"].append(st.name)
        self.write_manifest()

    def stage_done(self, name: str) -> bool:
        """True when the manifest has a finished record of ``name`` with its outputs present."""
        record = self.manifest["stages"].get(name)
        return bool(record and record.get("status") == "done" and self._outputs_present(record))

    # ----------------------------------------------------------------- segments

    def segment(self, name: str, *, seed: int | None = None) -> RunDir:
        """A sub-run in ``segments/<name>/`` with its own manifest (chained exploration)."""
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"invalid segment name {name!r}")
        sub = RunDir(self.path / "segments" / name, seed=seed, force=self.force)
        if name not in self.manifest["segments"]:
            self.manifest["segments"][name] = f"segments/{name}"
            self.write_manifest()
        return sub

"""The run directory: one folder per run, resumable stages, and ``manifest.json``.

Layout and rules (DESIGN.md §1)::

    <out>/manifest.json          inputs, full config, seed, backend per stage, package
                                 versions, timings, artifact hashes (sha256)
    <out>/<artifacts>            panorama.png, depth.npz, trajectory.json, scaffold.npz, ...
    <out>/segments/<name>/       sub-runs (chained exploration), each a RunDir of its own

A stage has a name, a JSON-able config, the files it reads (``inputs``) and the files it
writes (``outputs``, paths relative to the run directory). Its *config hash* is the sha256
of the canonical JSON of (name, config, sha256 of every input). A stage whose manifest
record has the same hash and whose outputs all exist with their recorded sha256 is skipped.

Each artifact is hashed once, when its stage commits. The manifest keeps, beside its sha256
and size, the file's stat signature (mtime, ctime, inode) at that moment; later checks (a
later stage's inputs, a resume) reuse the recorded sha256 while the signature is unchanged
and read the bytes again otherwise (any write, ``touch``, copy or replacement changes it).
A signature is trusted only when the file's mtime lies clearly (``RACY_NS``) before the
moment it was taken, so a write in the same clock tick cannot hide (git's "racy" rule);
on filesystems with whole-second timestamps it is never trusted.

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

Two processes never write one run directory at once: writers hold
:func:`matrix_world.runlock.run_lock` around it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import functools
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

from matrix_world.artifacts import artifact_load_problem, signature_holds, stat_signature
from matrix_world.errors import InputError, one_line
from matrix_world.io import OutputError, write_text

MANIFEST = "manifest.json"
FORMAT = "matrix_world.run/1"
# Distributions whose versions the manifest records when installed (read from metadata only).
VERSION_PACKAGES = ("matrix_world", "torch", "numpy", "diffusers", "transformers", "peft", "accelerate",
                    "gsplat", "diffrp-nvdiffrast", "dlr-moge", "trimesh", "opencv-python-headless",
                    "imageio", "imageio-ffmpeg", "safetensors", "scipy")


# --------------------------------------------------------------------------- hashing


def jsonable(value: Any, *, strict: bool = True) -> Any:
    """Config / info values -> plain JSON types. The one JSON sanitiser of the project.

    Dataclasses become dicts, tuples lists, paths strings, numpy / torch scalars Python
    numbers and arrays nested lists; dict keys become strings. Non-finite floats become
    their repr (``'nan'``, ``'inf'``, ``'-inf'``: JSON has neither). Any other object raises
    TypeError, or with ``strict=False`` becomes ``str(value)`` (reports, benchmark results).
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value), strict=strict)
    if isinstance(value, dict):
        return {str(k): jsonable(v, strict=strict) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, strict=strict) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, float) and not math.isfinite(value):
        return repr(float(value))  # float(): np.float64 is a float whose repr is 'np.float64(nan)'
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalar
        return jsonable(value.item(), strict=strict)
    if hasattr(value, "tolist"):
        return jsonable(value.tolist(), strict=strict)
    if not strict:
        return str(value)
    raise TypeError(f"config value {value!r} of type {type(value).__name__} is not JSON-able")


def small_info(info: dict, limit: int = 2000) -> dict[str, Any]:
    """The entries of a backend's info dict that are small enough for the manifest.

    An entry is kept, as ``jsonable(value, strict=False)``, when that value's JSON
    (``json.dumps``) is shorter than ``limit`` characters; larger ones (arrays, long
    lists) are dropped. Arrays whose element count alone rules them out are not converted.
    """
    out: dict[str, Any] = {}
    for key, value in info.items():
        count = value.numel() if callable(getattr(value, "numel", None)) else getattr(value, "size", None)
        if isinstance(count, int) and 2 * count - 1 >= limit:  # n numbers need >= 2n - 1 characters
            continue
        plain = jsonable(value, strict=False)
        if len(json.dumps(plain)) < limit:
            out[str(key)] = plain
    return out


def canonical_json(value: Any) -> str:
    """Sorted, compact JSON used for hashing (floats use Python's exact repr)."""
    return json.dumps(jsonable(value), sort_keys=True, separators=(",", ":"), allow_nan=False)


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
    """Python and installed package versions, read from metadata (nothing is imported).

    Read once per process (40-70 ms; every manifest write records them)."""
    return dict(_package_versions(tuple(packages)))


@functools.lru_cache(maxsize=4)
def _package_versions(packages: tuple[str, ...]) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


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
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot write in the run folder {self.run.path} ({exc.strerror or exc}: "
                              f"{target.parent}); expected a writable folder") from None
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
        """sha256 of a file: the run artifact's recorded one while its stat signature holds, else
        file_sha256 (cached per path, size, mtime and ctime for this RunDir object)."""
        path = Path(path)
        record = self._artifact_record(path)
        if record is not None and signature_holds(path, record):
            return record["sha256"]
        stat = os.stat(path)
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
        if key not in self._hash_cache:
            self._hash_cache[key] = file_sha256(path)
        if record is not None and record.get("sha256") == self._hash_cache[key]:  # verified: trust it from now on
            record["stat"] = stat_signature(path)
        return self._hash_cache[key]

    def _artifact_record(self, path: Path) -> dict | None:
        """The manifest's record of ``path`` when it is an artifact of this run, else None."""
        try:
            rel = path.resolve().relative_to(self.path.resolve()).as_posix()
        except ValueError:
            return None
        return self.manifest["artifacts"].get(rel)

    # ----------------------------------------------------------------- manifest

    @staticmethod
    def _empty_manifest() -> dict[str, Any]:
        return {"format": FORMAT, "created": _now(), "seed": None, "inputs": {}, "config": {}, "backends": {},
                "versions": {}, "timings": {}, "artifacts": {}, "stages": {}, "segments": {}, "runs": []}

    def _load_manifest(self) -> dict:
        empty = self._empty_manifest()
        file = self.path / MANIFEST
        if not file.is_file():
            return empty
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise InputError(f"{file} is unreadable ({type(exc).__name__}: {one_line(exc)}); delete it or choose another "
                             "output folder") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise InputError(f"{file} is not a matrix_world run manifest (format {FORMAT}); choose another output folder")
        return {**empty, **data}

    def write_manifest(self) -> None:
        """Rewrite ``manifest.json`` atomically with the current versions and this run's record."""
        self.manifest["updated"] = _now()
        self.manifest["versions"] = package_versions()
        runs = [r for r in self.manifest["runs"] if r.get("id") != self._run_record["id"]]
        self.manifest["runs"] = (runs + [self._run_record])[-20:]
        write_text(self.path / MANIFEST, json.dumps(jsonable(self.manifest), indent=1, sort_keys=False) + "\n")

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
            out[rel] = self._sha256(file)  # the bytes as they are now (cached per size and mtime)
        for key, path in (files or {}).items():
            if path is None:
                continue
            if not Path(path).is_file():
                raise InputError(f"input {key} {path} does not exist")
            out[f"file:{key}"] = self._sha256(path)
        return out

    def _outputs_present(self, record: dict) -> bool:
        return self._outputs_problem(record) is None

    def _outputs_problem(self, record: dict) -> str | None:
        """None when every output of ``record`` is in place with its recorded sha256, else what is wrong."""
        for rel in record.get("outputs", []):
            art = self.manifest["artifacts"].get(rel)
            file = self.path / rel
            if art is None:
                return f"{rel} has no artifact record"
            if not file.is_file():
                return f"{rel} is missing"
            if file.stat().st_size != art.get("bytes") or self._sha256(file) != art.get("sha256"):
                return f"{rel} differs from the sha256 the manifest recorded (changed or corrupt)"
            problem = artifact_load_problem(file)
            if problem is not None:
                return f"{rel} does not load ({problem})"
        return None

    def artifact_ok(self, rel: str) -> bool:
        """True when ``rel`` is a recorded artifact whose bytes match its sha256."""
        return self._outputs_problem({"outputs": [rel]}) is None

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
        if len(set(outputs)) != len(outputs):
            raise ValueError(f"stage {name!r} declares an output twice: {outputs}")
        for rel in outputs:
            if Path(rel).is_absolute() or ".." in Path(rel).parts or rel == MANIFEST:
                raise ValueError(f"stage output {rel!r} must be a relative path inside the run directory")
        config = jsonable(config)
        input_hashes = self._input_hashes(inputs, files)
        digest = config_hash({"stage": name, "config": config, "inputs": input_hashes, "outputs": sorted(outputs)})
        record = self.manifest["stages"].get(name)
        done = (not self.force and record is not None and record.get("status") == "done"
                and record.get("config_hash") == digest)
        if done:
            problem = self._outputs_problem(record)
            if problem is not None:
                _warn(f"{name}: {problem}; recomputing it")
                done = False
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
        for rel in st.outputs:  # the one full read of each output's bytes
            staged = st.staging / rel
            artifacts[rel] = {"sha256": file_sha256(staged), "bytes": staged.stat().st_size, "stage": st.name}
        if self.manifest["stages"].pop(st.name, None) is not None:
            self.write_manifest()  # killed while moving -> no stale "done" record over mixed outputs
        for rel in st.outputs:
            if (self.path / rel).is_dir():
                raise OutputError(f"cannot write {self.path / rel}: a folder is in the way")
        moved: list[Path] = []
        try:
            for rel in st.outputs:
                final = self.path / rel
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(st.staging / rel, final)
                moved.append(final)
        except OSError as exc:
            for final in moved:  # no artifact without its manifest record
                final.unlink(missing_ok=True)
            raise OutputError(f"moving the outputs of stage {st.name!r} into {self.path} failed: {exc}") from exc
        for rel, art in artifacts.items():  # the signature of the file in place (a rename changes its ctime)
            final = self.path / rel
            art["stat"] = stat_signature(final)
            stat = final.stat()
            self._hash_cache[(str(final.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)] = art["sha256"]
        # outputs of an earlier version of this stage that it no longer writes: stale, removed
        for rel, art in list(self.manifest["artifacts"].items()):
            if art.get("stage") == st.name and rel not in artifacts:
                self.manifest["artifacts"].pop(rel)
                (self.path / rel).unlink(missing_ok=True)
        self.manifest["artifacts"].update(artifacts)
        self.manifest["stages"][st.name] = {
            "status": "done", "config_hash": st.config_hash, "config": st.config, "inputs": st.inputs,
            "backend": st.backend, "started": started, "seconds": round(seconds, 4),
            "outputs": list(st.outputs), "info": jsonable(st.info)}
        self.manifest["config"][st.name] = st.config
        self.manifest["backends"][st.name] = st.backend
        self.manifest["timings"][st.name] = round(seconds, 4)
        self._run_record["ran"].append(st.name)
        self.write_manifest()

    def stage_done(self, name: str) -> bool:
        """True when the manifest has a finished record of ``name`` with its outputs present."""
        record = self.manifest["stages"].get(name)
        return bool(record and record.get("status") == "done" and self._outputs_present(record))

    def clear(self) -> list[str]:
        """Remove every recorded artifact, the segments and the records (``--overwrite``).

        Files the manifest does not list are left alone. Returns what was removed.
        """
        removed = []
        for rel in list(self.manifest["artifacts"]):
            if (self.path / rel).is_file():
                (self.path / rel).unlink()
                removed.append(rel)
        removed += self.drop_segments()
        seed = self.manifest.get("seed")
        self.manifest = {**self._empty_manifest(), "seed": seed}
        return removed

    # ----------------------------------------------------------------- segments

    def drop_segments(self) -> list[str]:
        """Remove the explored segments and the merged world built on them (their base changed).

        Deletes ``segments/``, ``world_base.ply``, ``world_segments.npz`` and the ``merge``
        stage with its outputs (``world.ply`` then holds the merge, so it goes too and the
        reconstruction stage writes the base world again). Returns what was removed.
        """
        removed = []
        merge = self.manifest["stages"].pop("merge", None)
        merged = set((merge or {}).get("outputs", []))
        for name, record in list(self.manifest["stages"].items()):
            if merged & set(record.get("outputs", [])):  # the stage whose outputs the merge replaced
                self.manifest["stages"].pop(name)  # (reconstruction) runs again
        for rel in sorted(merged) + ["world_base.ply", "world_segments.npz"]:
            self.manifest["artifacts"].pop(rel, None)
            if (self.path / rel).is_file():
                (self.path / rel).unlink()
                removed.append(rel)
        if (self.path / "segments").is_dir():
            shutil.rmtree(self.path / "segments")
            removed.append("segments/")
        for record in ("config", "backends", "timings"):
            self.manifest[record].pop("merge", None)
        self.manifest["segments"] = {}
        self.manifest.pop("world", None)
        return removed

    def segment(self, name: str, *, seed: int | None = None) -> RunDir:
        """A sub-run in ``segments/<name>/`` with its own manifest (chained exploration)."""
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"invalid segment name {name!r}")
        sub = RunDir(self.path / "segments" / name, seed=seed, force=self.force)
        if name not in self.manifest["segments"]:
            self.manifest["segments"][name] = f"segments/{name}"
            self.write_manifest()
        return sub

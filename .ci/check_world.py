"""CI: check what the README's main job wrote (`python .ci/check_world.py RUN_DIR PROMPT`).

Read with plyfile, not with matrix_world's own reader, so that a bug in our reader cannot
hide one in our writer. Exits 1 with the reasons when anything is wrong.
"""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
from plyfile import PlyData

STAGES = ("panorama", "depth", "trajectory", "scaffold", "video", "reconstruction", "preview", "contact_sheet")
FIELDS = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]
          + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)])
MIN_GAUSSIANS = 1000


def problems(run: Path, prompt: str) -> list[str]:
    found = []
    ply = run / "world.ply"
    if not ply.is_file():
        return [f"{ply} is missing"]
    vertex = PlyData.read(str(ply))["vertex"]
    names = [p.name for p in vertex.properties]
    missing = [f for f in FIELDS if f not in names]
    if missing:
        found.append(f"world.ply lacks the standard 3DGS fields {missing} (has {names})")
    if vertex.count <= MIN_GAUSSIANS:
        found.append(f"world.ply holds {vertex.count} Gaussians; expected more than {MIN_GAUSSIANS}")
    for name in names:
        values = np.asarray(vertex[name])
        if not np.isfinite(values).all():
            found.append(f"world.ply field {name} has {int((~np.isfinite(values)).sum())} non-finite values")
    if not missing:
        quats = np.stack([np.asarray(vertex[f"rot_{i}"]) for i in range(4)], -1)
        if (np.linalg.norm(quats, axis=-1) < 1e-6).any():
            found.append("world.ply has zero quaternions")
    manifest_file = run / "manifest.json"
    if not manifest_file.is_file():
        return found + [f"{manifest_file} is missing"]
    manifest = json.loads(manifest_file.read_text())
    if manifest.get("format") != "matrix_world.run/1":
        found.append(f"manifest format is {manifest.get('format')!r}")
    if manifest.get("world_config", {}).get("prompt") != prompt:
        found.append(f"manifest prompt is {manifest.get('world_config', {}).get('prompt')!r}, expected {prompt!r}")
    for stage in STAGES:
        if manifest.get("stages", {}).get(stage, {}).get("status") != "done":
            found.append(f"stage {stage} is not done in the manifest")
    artifacts = manifest.get("artifacts", {})
    if "world.ply" not in artifacts:
        found.append("world.ply has no artifact record")
    for rel, art in artifacts.items():
        file = run / rel
        if not file.is_file():
            found.append(f"artifact {rel} is missing")
        elif hashlib.sha256(file.read_bytes()).hexdigest() != art.get("sha256"):
            found.append(f"artifact {rel} does not match its sha256 in the manifest")
    if (run / ".lock").exists():
        found.append("the run left its .lock file behind")
    return found


if __name__ == "__main__":
    run_dir, prompt = Path(sys.argv[1]), sys.argv[2]
    bad = problems(run_dir, prompt)
    for line in bad:
        print(f"check_world: {line}", file=sys.stderr)
    if bad:
        sys.exit(1)
    count = PlyData.read(str(run_dir / "world.ply"))["vertex"].count
    print(f"check_world: {run_dir} OK ({count:,} Gaussians, {len(STAGES)} stages done, artifacts match their sha256)")

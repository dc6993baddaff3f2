"""What every benchmark script shares: writing its numbers to ``$OUT/<name>.json``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from matrix_world.rundir import jsonable


def write_results(name: str, results: dict) -> Path | None:
    """Write ``results`` to ``$OUT/<name>.json`` when the OUT environment variable is set.

    Values go through ``rundir.jsonable(strict=False)``, as the run manifest does: NaN and
    infinities become the strings ``'nan'``, ``'inf'``, ``'-inf'`` and objects JSON has no
    type for become their ``str``. Benchmarks call it after every section, so a late failure
    keeps the numbers measured so far.
    """
    out = os.environ.get("OUT")
    if not out:
        return None
    path = Path(out) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(results, strict=False), indent=1, allow_nan=False) + "\n")
    return path

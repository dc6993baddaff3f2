"""What every benchmark script shares: writing its numbers to ``$OUT/<name>.json``."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path


def finite(obj):
    """NaN/Inf -> None, recursively (strict JSON); other non-JSON values become strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if hasattr(obj, "item"):  # numpy / torch scalars
        return finite(obj.item())
    return str(obj)


def write_results(name: str, results: dict) -> Path | None:
    """Write ``results`` to ``$OUT/<name>.json`` when the OUT environment variable is set.

    Benchmarks call it after every section, so a late failure keeps the numbers measured so far.
    """
    out = os.environ.get("OUT")
    if not out:
        return None
    path = Path(out) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(finite(results), indent=1) + "\n")
    return path

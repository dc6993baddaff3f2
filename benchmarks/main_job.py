"""The README's main job on this machine, idle and under load, with several torch thread counts.

    python benchmarks/main_job.py                       # the table in benchmarks/RESULTS.md
    python benchmarks/main_job.py --frames 17 --threads default 1 2 --load 0 2

Each run is ``python scripts/text2world.py "a quiet harbour town at sunset" --out TMP``
(+ ``--frames N`` when not 81, + ``--threads T`` unless ``default``), timed from outside, with
OMP_NUM_THREADS unset so that the pipeline's own default applies. ``--load K`` starts K
busy processes (a pure-Python loop each, like another user's job) for the runs of that row;
they stop when the row is done. Prints a markdown table and writes JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a quiet harbour town at sunset"
BUSY = "import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n"


def run_job(frames: int, threads: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(ROOT / "scripts" / "text2world.py"), PROMPT, "--out", str(Path(tmp) / "run")]
        if frames != 81:
            cmd += ["--frames", str(frames)]
        if threads != "default":
            cmd += ["--threads", threads]
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"main job failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    chosen = next((line.strip() for line in proc.stdout.splitlines() if line.strip().startswith("threads:")), "?")
    return {"frames": frames, "threads": threads, "chosen": chosen, "seconds": round(wall, 1),
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[81])
    parser.add_argument("--threads", nargs="+", default=["default"], help="'default' or integers")
    parser.add_argument("--load", type=int, nargs="+", default=[0, 2], help="busy processes per row")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    for load in args.load:
        busy = [subprocess.Popen([sys.executable, "-c", BUSY.format(seconds=3600)]) for _ in range(load)]
        try:
            if load:
                time.sleep(20)  # let the load average see them
            for frames in args.frames:
                for threads in args.threads:
                    row = {"busy_processes": load, **run_job(frames, threads)}
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
        finally:
            for p in busy:
                p.kill()
                p.wait()
    print(f"\n{os.cpu_count()} cores\n\n| busy processes | frames | --threads | chosen | seconds | load before / after |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['busy_processes']} | {r['frames']} | {r['threads']} | {r['chosen']} | {r['seconds']} | "
              f"{r['load_before']} / {r['load_after']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

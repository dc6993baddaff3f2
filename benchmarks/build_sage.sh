#!/usr/bin/env bash
# Build a SageAttention 2.2.0 wheel for Hopper (sm90) on the GPU machine, once; later calls carry it in .whl/.
#   bash benchmarks/build_sage.sh SRC_DIR OUT_DIR
# SRC_DIR: thu-ml/SageAttention at d1a57a5 (setup.py, README.md, LICENSE, MANIFEST.in, pyproject.toml,
# sageattention/, csrc/), e.g. `git archive` of the fetched mirror into .sage/src (git-excluded, carried).
# SageAttention >= 2.1.1 is not on PyPI and diffusers' `sage` backend checks the INSTALLED version, so an
# in-place build is not seen: it must be a wheel. Two edits make it small and quick (FACTS A2: the full
# build takes 276 s): SAGE_SM90_ONLY=1 builds only the sm90 and fused extensions (sageattn's Hopper path:
# INT8 QK, FP8 PV), and no -g in the host flags. Needs nvcc >= 12.3 and torch on the machine.
set -euo pipefail
src=$1 out=$2
python3 - "$src/setup.py" <<'PY'
import sys
p = sys.argv[1]; s = open(p).read()
s = s.replace('CXX_FLAGS = ["-g", "-O3"', 'CXX_FLAGS = ["-O3"')
for name, cond in (("_qattn_sm80", "HAS_SM80 or HAS_SM86 or HAS_SM89 or HAS_SM90 or HAS_SM100 or HAS_SM120 or HAS_SM121"),
                   ("_qattn_sm89", "HAS_SM89 or HAS_SM90 or HAS_SM100 or HAS_SM120 or HAS_SM121")):
    old = f"    if {cond}:\n        ext_modules.append(\n            CUDAExtension(\n                name=\"sageattention.{name}\""
    new = f"    if os.getenv('SAGE_SM90_ONLY') != '1' and ({cond}):\n        ext_modules.append(\n            CUDAExtension(\n                name=\"sageattention.{name}\""
    s = s.replace(old, new)
open(p, "w").write(s)
PY
export TORCH_CUDA_ARCH_LIST=9.0 SAGE_SM90_ONLY=1 MAX_JOBS=${MAX_JOBS:-12} EXT_PARALLEL=${EXT_PARALLEL:-2} NVCC_APPEND_FLAGS="--threads 4"
python3 -m pip wheel -q --no-build-isolation --no-deps -w "$out" "$src"
ls -la "$out"/sageattention-*.whl

# Source this on the GPU machine (repo root): installs the carried wheels and the project,
# and points the CUDA extension builds at a cache folder.
#   usage: source benchmarks/gpu_env.sh
set -o pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
t0=$(date +%s)
stamp=$(ls .whl | md5sum | cut -c1-12)
if [ "$(cat /tmp/site/.stamp 2>/dev/null)" != "$stamp" ]; then  # a warm machine keeps the last install
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
  echo "$stamp" > /tmp/site/.stamp
fi
export PYTHONPATH=/tmp/site
ls .whl/diffrp_nvdiffrast-*.whl > /dev/null 2>&1 || \
  echo "[gpu_env] WARNING: no diffrp_nvdiffrast wheel in .whl: the scaffold stage falls back to the CPU rasteriser (~40-80 s instead of ~1.5 s)"
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . || return 1
# The gsplat extension may travel xz-compressed (16 MB -> 2 MB: a call carries at most 64 MiB).
if [ -f .ext/gsplat_cuda.so.xz ] && [ ! -f .ext/gsplat_cuda.so ]; then
  python3 -c "import lzma, shutil; shutil.copyfileobj(lzma.open('.ext/gsplat_cuda.so.xz'), open('.ext/gsplat_cuda.so', 'wb'))" || return 1
fi
# A gsplat extension built by an earlier call (carried in .ext/) is registered as gsplat.csrc,
# which gsplat imports before it tries to JIT-compile.
if [ -f .ext/gsplat_cuda.so ]; then
cat > /tmp/site/sitecustomize.py <<'PY'
import importlib.util, os, sys
_so = os.path.join(os.environ.get("MW_EXT_DIR", ""), "gsplat_cuda.so")
if os.path.isfile(_so):
    import torch  # noqa: F401  (the extension links against torch)
    _spec = importlib.util.spec_from_file_location("gsplat_cuda", _so)
    _mod = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_mod)
    sys.modules["gsplat.csrc"] = _mod
PY
export MW_EXT_DIR=$PWD/.ext
fi
echo "[gpu_env] installed in $(( $(date +%s) - t0 )) s; $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1)"

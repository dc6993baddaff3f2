#!/usr/bin/env bash
# Run named GPU jobs in one device call:  bash benchmarks/gpu_run.sh JOB [JOB ...]
# Each job's output goes to $OUT/<job>.log (and the tail to stdout); a failing job does not
# stop the others. Jobs are defined below; each has its own time limit.
source benchmarks/gpu_env.sh || exit 1
# At most 8 files come back from the device: logs and JSONs are packed into results.tgz.
FINAL=$OUT; export OUT=$FINAL/run; mkdir -p "$OUT" .ext
status=()
# The two CUDA builds, each written once: in a job (foreground) or beside GPU-bound jobs (background).
GSPLAT_BUILD="python -c 'import torch, gsplat; from gsplat.cuda._backend import _C; print(_C)' && \
  cp \$(python -c 'import torch.utils.cpp_extension as c; print(c._get_build_directory(\"gsplat_cuda\", False))')/gsplat_cuda.so $FINAL/gsplat_cuda.so"
SAGE_BUILD="bash benchmarks/build_sage.sh .sage/src $FINAL && \
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site $FINAL/sageattention-*.whl"
background() {  # background NAME COMMAND: run it beside the next jobs, log in $OUT/NAME.log; its pid in $!
  local name=$1; shift
  ( bash -c "$*" > "$OUT/$name.log" 2>&1; echo "rc=$?" >> "$OUT/$name.log" ) &
  status+=("$name started in the background")
}
job() {  # job NAME LIMIT_S COMMAND...
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  echo "=== $name (limit ${limit}s)"
  timeout "$limit" bash -c "$*" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$OUT/$name.log"
  status+=("$name rc=$rc $(( $(date +%s) - t0 ))s")
  printf '%s\n' "${status[@]}" > "$OUT/summary.txt"
  tar czf "$FINAL/results.tgz" -C "$OUT" .  # after every job: a later kill keeps what finished
}
for j in "$@"; do
  case $j in
    gsplat_build)  # compile gsplat once and keep the .so for later calls (carried as .ext/)
      job gsplat_build 300 "$GSPLAT_BUILD && ls -la $FINAL" ;;
    world_default) # the README's main command on a GPU with its defaults (17 frames): each stage's choose() and
                   # the GPU probes (nvdiffrast, gsplat) on real hardware; plan, manifest check and contact sheet
      job world_default 420 "python scripts/text2world.py 'a quiet harbour town at sunset' --frames 17 --out /tmp/world_gpu && \
        python .ci/check_world.py /tmp/world_gpu 'a quiet harbour town at sunset' && \
        python -c 'import json; m = json.load(open(\"/tmp/world_gpu/manifest.json\")); print(json.dumps(m[\"plan\"], indent=1)); print({k: (v[\"backend\"], v[\"seconds\"]) for k, v in m[\"stages\"].items()})' && \
        cp /tmp/world_gpu/contact_sheet.png $FINAL/world_gpu_contact_sheet.png" ;;
    splat_tests)   job splat_tests 300 "python -m pytest -q -rs tests/test_splat_render.py tests/test_gaussians.py tests/test_axes.py tests/test_splat_io.py" ;;
    splat_bench)   job splat_bench 300 "python benchmarks/splat_render.py" ;;
    pano_bench)    job pano_bench 360 "python benchmarks/panorama.py" ;;
    depth_bench)   job depth_bench 300 "python benchmarks/depth.py" ;;
    gen_tests)     job gen_tests 300 "python -m pytest tests/test_depth.py tests/test_panorama.py -m cuda -q -rs" ;;
    scaffold_tests) job scaffold_tests 300 "python -m pytest -q -rs -s -p no:cacheprovider tests/test_scaffold_render.py tests/test_scaffold_mesh.py && python -m pytest -q -rs -k cuda tests/test_render_scaffold_cli.py tests/test_scenes.py" ;;
    scaffold_bench) job scaffold_bench 300 "python benchmarks/scaffold.py --decimate 1 2" ;;
    video_tests)   job video_tests 240 "python -m pytest tests/test_video_pipeline.py -m cuda -q -rs" ;;
    multigpu_bench) # issue 17: s/step of the full-size random Wan on 1, 2, 4 GPUs (one torchrun each), 480p and 720p
      job multigpu_bench 590 "python benchmarks/multigpu.py --gpus 1 2 4 --timeout-s 190" ;;
    multigpu_e2e)  # issue 17: a 480p quality world (50 / 50 / 3000) on 4 GPUs, random full-size models
      job multigpu_e2e 590 "python benchmarks/multigpu.py --gpus 4 --resolutions 480p --steps 1 --e2e --timeout-s 580" ;;
    multigpu)      job multigpu 300 "torchrun --nproc_per_node \$(python -c 'import torch; print(torch.cuda.device_count())') tests/multigpu_video_check.py" ;;
    cuda_rest)     job cuda_rest 300 "python -m pytest -q -rs -k cuda tests/test_render_scaffold_cli.py tests/test_scenes.py" ;;
    video_lowvram720) job video_lowvram720 400 "python benchmarks/video.py --resolutions 720p --modes lowvram --no-stock --steps 2 --warmup 1 --budget-s 380" ;;
    video_bench)   job video_bench 590 "python benchmarks/video.py" ;;
    video_speed)   job video_speed 570 "python benchmarks/video.py --speed --budget-s 520" ;;  # stock vs ours per speed option, 480p
    sage_build)    # SageAttention 2.2 wheel for sm90 from .sage/src (carried); comes back in $FINAL, installed for later jobs
      job sage_build 420 "$SAGE_BUILD && python -c 'import sageattention, importlib.metadata as m; print(\"sageattention\", m.version(\"sageattention\"))'" ;;
    sage_build_bg) # the same build beside GPU-bound jobs; sage_wait joins it
      background sage_build "$SAGE_BUILD"; sage_pid=$! ;;
    gsplat_build_bg) # gsplat_build beside GPU-bound jobs; the .so comes back in $FINAL; gsplat_wait joins it
      background gsplat_build "$GSPLAT_BUILD"; gsplat_pid=$! ;;
    gsplat_wait)   job gsplat_wait 300 "while kill -0 $gsplat_pid 2>/dev/null; do sleep 2; done; tail -5 $OUT/gsplat_build.log" ;;
    depth_keyframes) # issue 14: MoGe on the 72 keyframe views (cold / warm, batch, tokens; forward vs post-processing)
      job depth_keyframes 240 "python benchmarks/depth.py --keyframes" ;;
    sage_wait)     job sage_wait 420 "while kill -0 $sage_pid 2>/dev/null; do sleep 2; done; tail -5 $OUT/sage_build.log" ;;
    video_speed720) # 720p: stock vs ours (cuDNN, compiled, + TaylorSeer) in one run, no Sage needed
      job video_speed720 400 "python benchmarks/video.py --speed --heights 720 --rows stock compiled compiled_taylorseer --steps 1 --cache-steps 6 --budget-s ${BUDGET720:-370}" ;;
    video_speed_sage) # 480p: stock vs ours with SageAttention 2 (needs sage_build or a carried wheel)
      job video_speed_sage 560 "python benchmarks/video.py --speed --heights ${HEIGHTS:-480} ${ROWS:+--rows $ROWS} ${SPEED_ARGS:-} --budget-s ${BUDGET_VIDEO:-$(( ${T_END:-$(( $(date +%s) + 540 ))} - $(date +%s) - 20 ))}" ;;
    video_error)   # item 5(a): per-step error of each approximation, teacher-forced, on the full-size random Wan (480p);
                   # beside sage_build_bg: WAIT_SAGE=420 (the sage variant waits for its install)
      job video_error 580 "python benchmarks/video_error.py ${ERR_VARIANTS:+--variants $ERR_VARIANTS} --wait-sage ${WAIT_SAGE:-0} --budget-s $(( ${T_END:-$(( $(date +%s) + 570 ))} - $(date +%s) - 15 ))" ;;
    video_speed_sage720) # 720p with SageAttention 2: stock vs Sage + compiled + TaylorSeer 2 (8 steps: every kind measured)
      job video_speed_sage720 500 "python benchmarks/video.py --speed --heights 720 --rows stock sage_compiled_ts2 --steps 1 --cache-steps 8 --budget-s ${BUDGET720:-470}" ;;
    e2e_worlds)    # whole worlds side by side in one process: quality stock path vs auto (steps cut, extrapolated), turbo measured
      job e2e_worlds 590 "python benchmarks/e2e.py --variants ${E2E_VARIANTS:-turbo:full:auto quality:full:off quality:full:auto} --budget-s $(( ${T_END:-$(( $(date +%s) + 570 ))} - $(date +%s) - 20 ))" ;;
    e2e_skip)      # quality worlds: exact auto vs step skipping (Sage + TaylorSeer 2; video cut to 8 steps, extrapolated per kind)
      job e2e_skip 590 "python benchmarks/e2e.py --variants quality:full:auto quality:full:skip --budget-s 560" ;;
    pinning)       # host RAM rates behind lowvram's pinning choice: torch's default pinned allocator, then cudaHostRegister on 8 threads
      job pinning 120 "python benchmarks/pinning.py && \
        PYTORCH_CUDA_ALLOC_CONF=pinned_use_cuda_host_register:True,pinned_num_register_threads:8 python benchmarks/pinning.py --name pinning_register" ;;
    pinning_runtime) # the cudaHostRegister allocator switched on after CUDA started, as lowvram does it
      job pinning_runtime 90 "python benchmarks/pinning.py --register-at-runtime --name pinning_runtime" ;;
    e2e_profile)   # cProfile of one world (default: turbo in lowvram): where a stage's time outside the transformer goes
      job e2e_profile ${PROFILE_LIMIT:-400} "python -m cProfile -o $OUT/e2e_profile.prof benchmarks/e2e.py --variants ${PROFILE_VARIANTS:-turbo:lowvram:auto} --run-dir /tmp/matrix_world_e2e_profile && \
        python -c 'import pstats, sys; s = pstats.Stats(sys.argv[1]); s.sort_stats(\"tottime\").print_stats(50); s.sort_stats(\"cumulative\").print_stats(120)' $OUT/e2e_profile.prof > $OUT/e2e_profile_top.txt; head -c 3000 $OUT/e2e_profile_top.txt" ;;
    vae_bench)     job vae_bench 240 "python benchmarks/vae.py ${VAE_ARGS:-}" ;;  # the Wan VAE untiled vs tiled: encode/decode seconds and peak rise (480p, 720p)
    e2e_lowvram)   # the turbo world in full memory and in lowvram, measured end to end
      job e2e_lowvram 590 "( while sleep 2; do echo \$(date +%s) \$(grep MemAvailable /proc/meminfo); done ) > $OUT/host_mem.log & W=\$!; \
        python benchmarks/e2e.py --variants ${LOWVRAM_VARIANTS:-turbo:full:auto turbo:lowvram:auto} --budget-s $(( ${T_END:-$(( $(date +%s) + 580 ))} - $(date +%s) - 20 )); rc=\$?; kill \$W; \
        sort -k3 -n $OUT/host_mem.log | head -1 | awk '{printf \"lowest host MemAvailable: %.1f GB (at epoch %s s)\\n\", \$3 * 1024 / 1e9, \$1}'; exit \$rc" ;;
    video2pano_bench) # wan (full-size random weights) on the canvas of docs/video2pano/city_pan.mp4: erp, windows, viewpoint
      job video2pano_bench 270 "python benchmarks/video2pano_wan.py \$( [ -f build/city_pan_frames.npz ] && echo --video build/city_pan_frames.npz )" ;;
    train_video_bench) job train_video_bench ${TV_LIMIT:-590} "python benchmarks/train_video.py ${TV_ARGS:-}" ;;  # json + loss curve in results.tgz
    recon_bench)   job recon_bench 590 "python benchmarks/recon.py" ;;
    lrm_bench)     job lrm_bench 590 "python benchmarks/lrm.py" ;;
    lrm_train_bench) # train a small LRM from scratch for 5 min (stand-in latents), then lrm vs lift vs optimize
      job lrm_train_bench 590 "python benchmarks/lrm_train.py --minutes 5 && cp \$OUT/lrm_train_stage*_metrics.jsonl $FINAL/" ;;
    e2e_bench)     job e2e_bench 560 "python benchmarks/e2e.py" ;;
    views_bench)   job views_bench 290 "python benchmarks/views.py" ;;  # issue 16: views2world + random Wan on a through-path scaffold
    train_bench)   job train_bench 560 "python benchmarks/train.py --what flux" ;;
    e2e_lrm)       job e2e_lrm 560 "python benchmarks/e2e.py --recon lrm --run-dir /tmp/matrix_world_e2e_lrm" ;;
    overhead_bench) job overhead_bench ${OVERHEAD_LIMIT:-240} "python benchmarks/overhead.py" ;;  # scaffold + reconstruction overheads (issue 14)
    split_bench)   job split_bench 300 "python benchmarks/build_benchmark_split.py --backend cuda --out /tmp/split_gpu" ;;
    *) echo "unknown job $j"; status+=("$j unknown") ;;
  esac
done
echo "=== summary"; cat "$OUT/summary.txt"; rm -rf "$OUT"

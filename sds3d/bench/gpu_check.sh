#!/usr/bin/env bash
# One GPU session's checks, in order of importance, each under its own time limit:
#   1. build gsplat's and nerfacc's CUDA kernels (JIT, TORCH_CUDA_ARCH_LIST, timed)
#   2. the CUDA tests: gsplat vs the torch rasterizer, nerfacc's occupancy-grid path vs the
#      dense path, the Gaussian scene on CUDA vs on the torch backend
#   3. `sds3d bench speed` at real model scale (every method x scene), then the speed options
#      for SDS with Gaussians and NeRF at 256
#   4. end-to-end `sds3d generate` runs with the exemplar prior on CUDA (Gaussians, NeRF)
#   5. the whole test suite on the GPU machine (device auto = cuda)
# Usage: bash sds3d/bench/gpu_check.sh OUT_DIR [SECONDS]   (from the repo root; python3 with a
# CUDA torch and sds3d's dependencies importable; SECONDS bounds the whole script, default 570).
# A kernel build that fails or runs out of time is reported, and the later stages fall back to
# the pure-torch paths (--gaussians.backend torch / --nerf.no-occupancy) so they still run.
set -u
OUT=${1:?usage: gpu_check.sh OUT_DIR [SECONDS]}
BUDGET=${2:-570}
mkdir -p "$OUT"
START=$(date +%s)
PY=${PYTHON:-python3}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} PYTHONUNBUFFERED=1
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/torch_extensions}
export SDS3D_EMBEDDING_CACHE=/tmp/sds3d-emb
[ -d /usr/local/cuda/bin ] && export PATH=$PATH:/usr/local/cuda/bin CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}

log() { echo "[gpu_check $(date +%T) +$(( $(date +%s) - START ))s] $*"; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
# stage NAME LIMIT CMD...: run CMD under min(LIMIT, time left - 5 s); log rc and seconds.
stage() {
  local name=$1 limit=$2; shift 2
  local rest=$(( $(left) - 5 ))
  (( rest < limit )) && limit=$rest
  if (( limit < 10 )); then log "SKIP $name: no time left"; return 99; fi
  log "BEGIN $name (limit ${limit}s): $*"
  local t0=$(date +%s)
  timeout --kill-after=5 "$limit" "$@"
  local rc=$?
  log "END $name rc=$rc after $(( $(date +%s) - t0 ))s"
  return $rc
}

log "env"
nvidia-smi -L; nvcc --version | tail -n 2
$PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

# 1. kernels: gsplat (many files) and nerfacc (few) build side by side on the machine's cores.
stage build-gsplat 300 env MAX_JOBS=${GSPLAT_JOBS:-12} $PY -c "import time; t = time.time(); from gsplat.cuda._backend import _C; assert _C is not None, 'no CUDA toolkit found'; print(f'gsplat kernels ready in {time.time() - t:.0f} s')" &
P1=$!
stage build-nerfacc 300 env MAX_JOBS=${NERFACC_JOBS:-4} $PY -c "import time; t = time.time(); from nerfacc.cuda._backend import _C; assert _C is not None, 'no CUDA toolkit found'; print(f'nerfacc kernels ready in {time.time() - t:.0f} s')" &
P2=$!
wait $P1; GSPLAT_RC=$?
wait $P2; NERFACC_RC=$?
FALLBACK=()
(( GSPLAT_RC == 0 )) || { FALLBACK+=(--gaussians.backend torch); log "gsplat unavailable: Gaussians use the torch rasterizer"; }
(( NERFACC_RC == 0 )) || { FALLBACK+=(--nerf.no-occupancy); log "nerfacc unavailable: NeRF uses the dense path"; }
find "$TORCH_EXTENSIONS_DIR" -name "*.so" -exec ls -la {} \; 2>/dev/null

# 2. parity of the CUDA kernels with the torch paths
stage cuda-tests 150 $PY -m pytest -q -p no:cacheprovider -rs -k cuda tests/test_render.py tests/test_gaussians.py tests/test_nerf.py

# 3. the speed benchmark: every method x scene at the default recipes, then the speed options
stage bench-all 220 $PY -m sds3d.bench.speed --arch sd21 --json-out "$OUT/speed.json" "${FALLBACK[@]}"
# tagged_json FILE TAG: the JSON object in FILE with "tag": TAG added, on one line
tagged_json() { $PY -c "import json, sys; r = json.load(open(sys.argv[1])); r['tag'] = sys.argv[2]; print(json.dumps(r))" "$1" "$2"; }
variant() {  # one SDS row with extra options, appended to speed-options.jsonl
  local tag=$1; shift
  stage "bench-$tag" 90 $PY -m sds3d.bench.speed --arch sd21 --guidance sds --json-out "/tmp/speed-$tag.json" "${FALLBACK[@]}" "$@" \
    && tagged_json "/tmp/speed-$tag.json" "$tag" >> "$OUT/speed-options.jsonl"
}
variant channels-last --scene gaussians --channels-last
variant tiny-vae --scene gaussians --tiny-vae
variant channels-last-tiny-vae --scene gaussians --channels-last --tiny-vae
variant nerf-256 --scene nerf --resolution 256
variant compile-channels-last --scene gaussians --channels-last --compile

# 4. end to end on CUDA with the exemplar prior, export at the default sizes (256)
e2e() {
  local tag=$1; shift
  stage "generate-$tag" 150 $PY -m sds3d.cli generate "a penguin" --prior exemplar --device cuda --output-dir "/tmp/runs-$tag" \
    --export.resolution 256 --turntable-resolution 256 "${FALLBACK[@]}" "$@"
  local run; run=$(ls -d /tmp/runs-"$tag"/*/ 2>/dev/null | head -n 1)
  [ -n "$run" ] || return 1
  log "summary of generate-$tag:"; cat "$run/summary.json"; echo
  tail -n 2 "$run/metrics.jsonl"
  tagged_json "$run/summary.json" "$tag" >> "$OUT/generate.jsonl"
}
e2e gaussians
e2e nerf --scene nerf

# 5. whatever time is left: the test suite on this machine
stage test-suite 600 $PY -m pytest -q -p no:cacheprovider --maxfail=5 --tb=short --durations=5
log "done"

#!/usr/bin/env bash
# One GPU session's checks at the REAL model size, in order of importance, each under its own
# time limit (the whole script under 9 minutes: budget 540 s by default):
#   1. build gsplat's and nerfacc's CUDA kernels (JIT, TORCH_CUDA_ARCH_LIST) and, side by side,
#      the random-weight SD-2.1-base and MVDream sd-v2.1-base-4view model folders
#      (sds3d.bench.scale_models; 11.6 GB of fp32 files in $SCALE_CACHE)     ~100 s, limit 200
#   2. the default recipe end to end on that pipeline: `sds3d generate` (SDS x Gaussians, batch 4
#      at 512, 1,200 steps, turntable, export at 256)                       ~170 s, limit 200
#   3. the same with the kernels hidden (--gaussians.backend torch: the torch rasterizer on
#      CUDA); stopped by SIGTERM at its limit if slower (the run checkpoints; metrics.jsonl has
#      its step times and the steps it reached)                                       limit 110
#   4. `sds3d bench scale --device cuda` (every guidance x scene, 2 steps + export, one process
#      a row, most informative rows first; rows done before the limit are in scale.json)
#   5. only if time is left: the CUDA parity tests (gsplat vs torch, nerfacc vs dense)
# Dropped from the 2026-11-26 script (measured then, docs/benchmarks.md): `bench speed` and its
# speed options (the step-time table stands), the exemplar-prior end-to-end runs (superseded by
# stage 2 at real size), the whole test suite. Each stage prints its wall time; every run's
# summary.json (load/step/export seconds, peak GPU memory = torch.cuda.max_memory_allocated,
# peak RSS) is printed and appended to OUT/generate.jsonl; a summary of all phases ends the log.
# Usage: bash sds3d/bench/gpu_check.sh OUT_DIR [SECONDS]   (from the repo root; python3 with a
# CUDA torch and sds3d's dependencies importable). DRY_RUN=1 prints the stages without running
# them. A CPU rehearsal of the whole script at the tiny architecture (seconds a stage):
#   DEVICE=cpu ARCH=tiny RUN_OPTS="--steps 2 --resolution 64 --export.resolution 32" \
#     SCALE_OPTS="--guidance sds --scene gaussians --resolution 64" bash sds3d/bench/gpu_check.sh OUT
# A kernel build that fails or runs out of time is reported, and the later stages fall back to
# the pure-torch paths (--gaussians.backend torch / --nerf.no-occupancy) so they still run.
set -u
OUT=${1:?usage: gpu_check.sh OUT_DIR [SECONDS]}
BUDGET=${2:-540}
mkdir -p "$OUT"
START=$(date +%s)
PY=${PYTHON:-python3}
SCALE_CACHE=${SCALE_CACHE:-/tmp/sds3d-scale}
PROMPT="a DSLR photo of a corgi"
DEVICE=${DEVICE:-cuda}
ARCH=${ARCH:-sd21}                 # sd21 (real size) or tiny (the CPU rehearsal)
read -r -a RUN_OPTS <<< "${RUN_OPTS:-}"      # extra generate options (the rehearsal's short run)
read -r -a SCALE_OPTS <<< "${SCALE_OPTS:-}"  # extra bench scale options
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/torch_extensions}
export SDS3D_EMBEDDING_CACHE=/tmp/sds3d-emb
[ -d /usr/local/cuda/bin ] && export PATH=$PATH:/usr/local/cuda/bin CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
PHASES="$OUT/phases.tsv"; : > "$PHASES"

log() { echo "[gpu_check $(date +%T) +$(( $(date +%s) - START ))s] $*"; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
# stage NAME LIMIT CMD...: run CMD under min(LIMIT, time left - 5 s); log rc and seconds.
stage() {
  local name=$1 limit=$2; shift 2
  local rest=$(( $(left) - 5 ))
  (( rest < limit )) && limit=$rest
  if (( limit < 10 )); then log "SKIP $name: no time left"; printf '%s\tskipped\t0\n' "$name" >> "$PHASES"; return 99; fi
  log "BEGIN $name (limit ${limit}s): $*"
  if [ -n "${DRY_RUN:-}" ]; then printf '%s\tdry\t0\n' "$name" >> "$PHASES"; return 0; fi
  local t0=$(date +%s)
  timeout --signal=TERM --kill-after=15 "$limit" "$@"
  local rc=$?
  log "END $name rc=$rc after $(( $(date +%s) - t0 ))s"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" >> "$PHASES"
  return $rc
}
# run_report TAG DIR: print the run's summary.json (or, if it was stopped, its last metrics line)
# and append it, tagged, to OUT/generate.jsonl
run_report() {
  $PY - "$1" "$2" "$OUT/generate.jsonl" <<'PYEOF'
import json, pathlib, sys
tag, parent, out = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3]
runs = sorted(parent.glob("*/"))
if not runs:
    print(f"{tag}: no run folder"); sys.exit(1)
run = runs[-1]
s = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {"status": "no summary"}
lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").is_file() else []
last = json.loads(lines[-1]) if lines else {}
r = {"tag": tag, "status": s.get("status"), "error": s.get("error"), "backend": s.get("backend"),
     "load_s": s.get("load_seconds"), "step_s": s.get("step_seconds"), "steps_reached": last.get("step"),
     "last_logged_step_s": last.get("seconds_per_step"), "train_s": s.get("train_seconds"),
     "turntable_s": s.get("turntable_seconds"), "export_s": s.get("export_seconds"), "total_s": s.get("seconds"),
     "max_memory_mb": s.get("max_memory_mb", last.get("max_memory_mb")), "peak_rss_mb": s.get("peak_rss_mb"),
     "mesh": {k: s.get("mesh", {}).get(k) for k in ("num_vertices", "num_faces", "pieces")}}
print(json.dumps(r))
open(out, "a").write(json.dumps(r) + "\n")
PYEOF
}

log "env"
nvidia-smi -L; nvcc --version | tail -n 2
$PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA')"

# 1. kernels (gsplat: many files; nerfacc: few) and the model folders, side by side.
stage build-gsplat 200 env MAX_JOBS=${GSPLAT_JOBS:-10} $PY -c "import time; t = time.time(); from gsplat.cuda._backend import _C; assert _C is not None, 'no CUDA toolkit found'; print(f'gsplat kernels ready in {time.time() - t:.0f} s')" &
P1=$!
stage build-nerfacc 200 env MAX_JOBS=${NERFACC_JOBS:-3} $PY -c "import time; t = time.time(); from nerfacc.cuda._backend import _C; assert _C is not None, 'no CUDA toolkit found'; print(f'nerfacc kernels ready in {time.time() - t:.0f} s')" &
P2=$!
stage build-models 200 env OMP_NUM_THREADS=3 $PY -c "import time; from pathlib import Path; from sds3d.bench.scale_models import ensure_models; t = time.time(); sd, mv, n = ensure_models(Path('$SCALE_CACHE'), '$ARCH'); print(f'models ready in {time.time() - t:.0f} s: {sd} {mv} {n}')" &
P3=$!
wait $P1; GSPLAT_RC=$?
wait $P2; NERFACC_RC=$?
wait $P3; MODELS_RC=$?
FALLBACK=()
(( GSPLAT_RC == 0 )) || { FALLBACK+=(--gaussians.backend torch); log "gsplat unavailable: Gaussians use the torch rasterizer"; }
(( NERFACC_RC == 0 )) || { FALLBACK+=(--nerf.no-occupancy); log "nerfacc unavailable: NeRF uses the dense path"; }
(( MODELS_RC == 0 )) || log "the model folders were not built: the real-size stages will fail"
SD=$SCALE_CACHE/$ARCH/sd21

# 2. the default recipe (text-to-image: SDS x Gaussians, batch 4 at 512, 1,200 steps) + export
stage generate-default 200 $PY -m sds3d.cli generate "$PROMPT" --prior "$SD" --device "$DEVICE" --output-dir "$OUT/runs-default" "${FALLBACK[@]}" "${RUN_OPTS[@]}"
[ -n "${DRY_RUN:-}" ] || run_report default "$OUT/runs-default"

# 3. the same with the kernels hidden: the torch rasterizer on CUDA
stage generate-no-kernels 110 $PY -m sds3d.cli generate "$PROMPT" --prior "$SD" --device "$DEVICE" --output-dir "$OUT/runs-nokernels" --gaussians.backend torch "${RUN_OPTS[@]}"
[ -n "${DRY_RUN:-}" ] || run_report no-kernels "$OUT/runs-nokernels"

# 4. every guidance x scene at real size on CUDA (the models above are reused)
SCALE_ARCH=real; [ "$ARCH" = tiny ] && SCALE_ARCH=tiny
stage bench-scale 400 $PY -m sds3d.cli bench scale --arch $SCALE_ARCH --device "$DEVICE" --cache-dir "$SCALE_CACHE" --out-dir "$OUT/scale" \
  --turntable-frames 8 --timeout-s 90 --extra="${FALLBACK[*]}" "${SCALE_OPTS[@]}"

# 5. whatever time is left: parity of the CUDA kernels with the torch paths
stage cuda-tests 150 $PY -m pytest -q -p no:cacheprovider -rs -k cuda tests/test_render.py tests/test_gaussians.py tests/test_nerf.py

log "phases (name, rc, seconds):"; cat "$PHASES"
[ -f "$OUT/generate.jsonl" ] && { log "runs:"; cat "$OUT/generate.jsonl"; }
[ -f "$OUT/scale/scale.json" ] && $PY -c "import json, sys; from sds3d.bench.scale import format_table; print(format_table(json.load(open(sys.argv[1]))['rows'], cuda=sys.argv[2].startswith('cuda')))" "$OUT/scale/scale.json" "$DEVICE"
log "done"

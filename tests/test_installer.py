"""The Windows installer's sources: PyInstaller spec, CUDA-torch runtime hook, launcher, NSIS script, CI wiring.

Fast checks only. The real build (freeze, --self-test of the frozen app, makensis -WX, payload and size checks)
runs in .ci/run through installer/build_bundle.sh and installer/build_installer.sh.
"""
from __future__ import annotations

import ast
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
INSTALLER = ROOT / "installer"
SPEC = INSTALLER / "tilewise.spec"
NSI = INSTALLER / "tilewise.nsi"
RTHOOK = INSTALLER / "rthook_cuda_torch.py"
LAUNCHER = INSTALLER / "tilewise_launcher.py"
WORKFLOW = ROOT / ".github" / "workflows" / "windows-installer.yml"
CI = ROOT / ".ci" / "run"
FILE_TYPES = (".nii", ".gz", ".nrrd", ".mha")


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rthook() -> ModuleType:
    return load(RTHOOK, "rthook_cuda_torch")


def spec_lists() -> dict[str, list[str]]:
    """The module-level list constants of the spec (it only runs inside PyInstaller)."""
    tree = ast.parse(SPEC.read_text(), filename=str(SPEC))
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                continue
            if isinstance(value, list):
                found[node.targets[0].id] = value
    return found


# --- PyInstaller spec -------------------------------------------------------------------------------------------------

def test_spec_bundles_plugin_metadata_and_dynamic_packages() -> None:
    lists = spec_lists()
    for distribution in ("tilewise", "napari", "npe2", "napari-svg", "napari-console", "torch", "nnunetv2", "openvino"):
        assert distribution in lists["METADATA"]
    for package in ("tilewise.engine", "tilewise.gui", "tilewise.resources", "napari_builtins", "napari_svg",
                    "napari_console", "nnunetv2", "dynamic_network_architectures", "openvino"):
        assert package in lists["DYNAMIC_PACKAGES"]
    for package in ("tilewise.resources", "tilewise.gui", "napari", "napari_builtins", "vispy", "npe2"):
        assert package in lists["DATA_PACKAGES"]
    for excluded in ("timm", "torchvision", "triton", "nnunetv2.training.nnUNetTrainer.primus"):
        assert excluded in lists["EXCLUDES"]


def test_spec_names_real_distributions_and_modules() -> None:
    """Every distribution whose metadata is copied exists, every hidden import and data package can be found."""
    lists = spec_lists()
    for distribution in lists["METADATA"]:
        importlib.metadata.distribution(distribution)  # raises PackageNotFoundError on a typo
    for module in lists["HIDDEN_IMPORTS"] + lists["DYNAMIC_PACKAGES"] + lists["DATA_PACKAGES"]:
        assert importlib.util.find_spec(module) is not None, module


def test_spec_covers_every_napari_manifest_command() -> None:
    """npe2 imports each `python_name` by name at run time: the spec must collect those modules."""
    packages = spec_lists()["DYNAMIC_PACKAGES"]
    manifest = yaml.safe_load((ROOT / "gui" / "napari.yaml").read_text())
    for command in manifest["contributions"]["commands"]:
        module = command["python_name"].split(":")[0]
        assert any(module == p or module.startswith(p + ".") for p in packages), module


def test_spec_collects_openvinos_cpu_plugin_and_pytorch_frontend() -> None:
    """OpenVINO loads plugins and frontends by file name: the spec must keep the ones Tilewise uses."""
    import openvino

    namespace: dict = {}
    tree = ast.parse(SPEC.read_text(), filename=str(SPEC))
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "OPENVINO_UNUSED_LIBRARIES":
            namespace["unused"] = ast.literal_eval(node.value)
    libraries = [p.name for p in (Path(openvino.__file__).parent / "libs").iterdir()]
    kept = [name for name in libraries if not any(part in name for part in namespace["unused"])]
    for needed in ("openvino_intel_cpu_plugin", "openvino_pytorch_frontend", "openvino_ir_frontend",
                   "openvino_intel_gpu_plugin", "tbb"):
        assert any(needed in name for name in kept), needed
    assert not any(unused in name for name in kept for unused in ("paddle", "onnx_frontend", "jax_frontend"))
    excludes = spec_lists()["EXCLUDES"]
    assert {"openvino.frontend.paddle", "openvino.frontend.jax", "openvino.frontend.onnx"} <= set(excludes)
    script = (INSTALLER / "build_bundle.sh").read_text()
    assert 'grep -q "backend: openvino"' in script and "--self-test --backend torch" in script


def test_spec_files_exist_and_build_two_launchers() -> None:
    text = SPEC.read_text()
    for name in ("tilewise_launcher.py", "rthook_cuda_torch.py", "tilewise.ico"):
        assert f'"{name}"' in text and (INSTALLER / name).is_file(), name
    assert 'executable("Tilewise", console=False)' in text
    assert 'executable("tilewise-cli", console=True)' in text
    assert 'name="Tilewise"' in text  # dist/Tilewise


def test_lean_requirements_leave_out_timm_and_torchvision() -> None:
    requirements = (INSTALLER / "requirements-bundle.txt").read_text().lower()
    lines = [line.split("#")[0].strip() for line in requirements.splitlines()]
    names = {re.split(r"[=<>!\[ ]", line)[0] for line in lines if line}
    assert not names & {"timm", "torchvision", "triton", "torch", "nnunetv2", "dynamic-network-architectures"}
    assert {"napari", "pyside6-essentials", "pyinstaller", "simpleitk", "acvl-utils", "openvino"} <= names
    script = (INSTALLER / "build_bundle.sh").read_text()
    assert "--no-deps $NO_DEPS" in script and "nnunetv2==" in script and "dynamic-network-architectures==" in script


# --- runtime hook: CUDA torch added next to the app -------------------------------------------------------------------

def fake_torch(folder: Path, suffix: str | None = None, version: str = "9.9.9+cu999") -> Path:
    package = folder / "torch"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(f"__version__ = {version!r}\n")
    (package / f"_C{suffix or importlib.machinery.EXTENSION_SUFFIXES[0]}").write_bytes(b"")
    return folder


def test_explicit_folder_wins(rthook: ModuleType, tmp_path: Path) -> None:
    folder = fake_torch(tmp_path / "mine")
    fake_torch(tmp_path / "data" / "tilewise" / "cuda-torch")
    environ = {"TILEWISE_TORCH_PATH": str(folder), "XDG_DATA_HOME": str(tmp_path / "data")}
    assert rthook.find_torch_override(environ, "linux") == folder.resolve()


def test_default_folder_per_platform(rthook: ModuleType, tmp_path: Path) -> None:
    windows = fake_torch(tmp_path / "AppData" / "Local" / "Tilewise" / "cuda-torch")
    assert rthook.find_torch_override({"LOCALAPPDATA": str(tmp_path / "AppData" / "Local")}, "win32") == windows
    linux = fake_torch(tmp_path / "home" / ".local" / "share" / "tilewise" / "cuda-torch")
    assert rthook.find_torch_override({"HOME": str(tmp_path / "home")}, "linux") == linux
    assert rthook.find_torch_override({}, "win32") is None


def test_no_folder_keeps_bundled_torch(rthook: ModuleType, tmp_path: Path) -> None:
    assert rthook.find_torch_override({"LOCALAPPDATA": str(tmp_path)}, "win32") is None
    empty = tmp_path / "Tilewise" / "cuda-torch"
    empty.mkdir(parents=True)
    assert rthook.find_torch_override({"LOCALAPPDATA": str(tmp_path)}, "win32") is None


def test_bundled_switches_the_lookup_off(rthook: ModuleType, tmp_path: Path) -> None:
    fake_torch(tmp_path / "Tilewise" / "cuda-torch")
    environ = {"LOCALAPPDATA": str(tmp_path), "TILEWISE_TORCH_PATH": "bundled"}
    assert rthook.find_torch_override(environ, "win32") is None


def test_torch_for_another_python_is_skipped_with_a_warning(rthook: ModuleType, tmp_path: Path) -> None:
    folder = fake_torch(tmp_path / "cp312", suffix=".cp312-win_amd64.pyd")
    warnings: list[str] = []
    environ = {"TILEWISE_TORCH_PATH": str(folder)}
    found = rthook.find_torch_override(environ, "win32", [".cp311-win_amd64.pyd", ".pyd"], warnings.append)
    assert found is None
    assert len(warnings) == 1 and "_C.cp312-win_amd64.pyd" in warnings[0] and "_C.cp311-win_amd64.pyd" in warnings[0]
    assert rthook.torch_problem(folder, [".cp312-win_amd64.pyd", ".pyd"]) is None


def test_missing_explicit_folder_warns(rthook: ModuleType, tmp_path: Path) -> None:
    warnings: list[str] = []
    assert rthook.find_torch_override({"TILEWISE_TORCH_PATH": str(tmp_path / "nope")}, "linux", None, warnings.append) is None
    assert warnings and "no such folder" in warnings[0]


def test_apply_puts_the_folder_first(rthook: ModuleType, tmp_path: Path) -> None:
    folder = fake_torch(tmp_path / "cuda")
    path = ["/bundle/base_library.zip", "/bundle", str(folder.resolve())]
    env = {"TILEWISE_TORCH_PATH": str(folder)}
    assert rthook.apply_torch_override(path, env) == folder.resolve()
    assert path == [str(folder.resolve()), "/bundle/base_library.zip", "/bundle"]
    assert env["TILEWISE_TORCH_OVERRIDE"] == str(folder.resolve())
    assert rthook.apply_torch_override(path := ["/bundle"], {"TILEWISE_TORCH_PATH": "bundled"}) is None
    assert path == ["/bundle"]


def test_hook_makes_import_torch_load_the_added_build(tmp_path: Path) -> None:
    """As in the frozen app: the hook runs first (sys.frozen set), then `import torch` finds the added package."""
    folder = fake_torch(tmp_path / "cuda-torch", version="2.13.0+cu126")
    code = ("import runpy, sys; sys.frozen = True; runpy.run_path(sys.argv[1]); import torch, os; "
            "print(torch.__version__, torch.__file__, os.environ['TILEWISE_TORCH_OVERRIDE'], sep='|')")
    env = {**os.environ, "TILEWISE_TORCH_PATH": str(folder)}
    result = subprocess.run([sys.executable, "-c", code, str(RTHOOK)], capture_output=True, text=True, env=env,
                            timeout=60, check=True)
    version, file, used = result.stdout.strip().split("|")
    assert version == "2.13.0+cu126"
    assert Path(file).parent.parent == folder.resolve() and Path(used) == folder.resolve()


# --- launcher ---------------------------------------------------------------------------------------------------------

def test_launcher_passes_everything_else_to_the_tilewise_command(monkeypatch: pytest.MonkeyPatch) -> None:
    launcher = load(LAUNCHER, "tilewise_launcher")
    calls: list[list[str]] = []
    from tilewise.engine.commands import cli

    monkeypatch.setattr(cli, "main", lambda: calls.append(sys.argv[1:]) or 7)
    monkeypatch.setattr(sys, "argv", ["Tilewise", "predict", "-m", "demo"])
    assert launcher.main() == 7
    assert calls == [["predict", "-m", "demo"]]
    assert launcher.SMOKE_TEST_FLAG in (INSTALLER / "build_bundle.sh").read_text()


# --- NSIS script ------------------------------------------------------------------------------------------------------

def nsis_defines(text: str) -> dict[str, str]:
    return dict(re.findall(r'^!define (\w+) "([^"]*)"', text, flags=re.MULTILINE))


def expand(value: str, defines: dict[str, str]) -> str:
    for _ in range(3):
        value = re.sub(r"\$\{(\w+)\}", lambda m: defines.get(m.group(1), m.group(0)), value)
    return value


def uninstall_section(text: str) -> str:
    return text.split('Section "Uninstall"', 1)[1].split("SectionEnd", 1)[0]


def test_nsis_installs_per_user_without_admin() -> None:
    text = NSI.read_text()
    assert re.search(r"^RequestExecutionLevel user$", text, flags=re.MULTILINE)
    assert 'InstallDir "$LOCALAPPDATA\\Programs\\${APP}"' in text
    assert "HKLM" not in text and "SetShellVarContext all" not in text
    assert '!include "MUI2.nsh"' in text and "SetCompressor" in text
    for define in ("VERSION", "BUNDLE_DIR", "EXE_NAME", "CLI_EXE_NAME", "OUTFILE"):
        assert f"${{{define}}}" in text


def test_nsis_uninstall_entry_for_apps_and_features() -> None:
    text = NSI.read_text()
    defines = nsis_defines(text)
    assert defines["UNINSTALL_KEY"] == "Software\\Microsoft\\Windows\\CurrentVersion\\Uninstall\\${APP}"
    values = set(re.findall(r'WriteReg(?:Str|DWORD) HKCU "\$\{UNINSTALL_KEY\}" "(\w+)"', text))
    assert {"DisplayName", "DisplayVersion", "DisplayIcon", "UninstallString", "QuietUninstallString",
            "InstallLocation", "EstimatedSize"} <= values
    assert 'WriteUninstaller "$INSTDIR\\${UNINSTALLER}"' in text


def test_nsis_open_with_for_every_file_type() -> None:
    text = NSI.read_text()
    defines = nsis_defines(text)
    assert expand(defines["APP_KEY"], defines) == "Software\\Classes\\Applications\\${EXE_NAME}"
    assert '"${APP_KEY}\\shell\\open\\command" "" \'"$INSTDIR\\${EXE_NAME}" "%1"\'' in text
    for extension in FILE_TYPES:
        assert f'!insertmacro ADD_OPEN_WITH "{extension}"' in text
        assert f'!insertmacro REMOVE_OPEN_WITH "{extension}"' in uninstall_section(text)
    assert 'Software\\Classes\\${EXT}\\OpenWithProgids" "${PROGID}"' in text


def test_nsis_uninstaller_removes_what_the_installer_wrote() -> None:
    text = NSI.read_text()
    defines = nsis_defines(text)
    install, uninstall = text.split('Section "Uninstall"', 1)
    uninstall = uninstall.split("SectionEnd", 1)[0]
    removed_keys = [expand(k, defines) for k in re.findall(r'DeleteRegKey HKCU "([^"]+)"', uninstall)]
    for key in re.findall(r'WriteReg\w+ HKCU "([^"]+)"', install):
        key = expand(key, defines)
        if "${EXT}" in key:  # OpenWithProgids values: removed by REMOVE_OPEN_WITH (checked above)
            continue
        assert any(key == k or key.startswith(k + "\\") for k in removed_keys), key
    for link in re.findall(r'CreateShortcut "([^"]+)"', install):
        assert f'Delete "{link}"' in uninstall, link
    for name in ("${EXE_NAME}", "${CLI_EXE_NAME}", "${UNINSTALLER}"):
        assert f'Delete "$INSTDIR\\{name}"' in uninstall
    assert 'RMDir /r "$INSTDIR\\_internal"' in uninstall
    assert 'RMDir /r "$INSTDIR"' not in uninstall  # never recursively delete a folder the user may have chosen
    assert re.search(r'Section "Desktop shortcut"', text) and re.search(r"SectionIn RO", install)


# --- CI wiring --------------------------------------------------------------------------------------------------------

WINE_SCRIPT = INSTALLER / "windows_under_wine.sh"
NATIVE_STAGES = ("bundle", "dlls", "installer", "install", "selftest", "predict", "viewer", "uninstall")


def test_ci_and_windows_workflow_run_the_same_steps() -> None:
    """.ci/run builds and runs the Windows installer under Wine (no Linux bundle: nobody installs it); the Windows
    workflow runs every native stage of installer/windows_under_wine.sh, whose stages call the same build scripts."""
    ci = CI.read_text()
    workflow = WORKFLOW.read_text()
    script = WINE_SCRIPT.read_text()
    for package in ("nsis", "p7zip-full", "wine32:i386", "gcc-mingw-w64-x86-64"):
        assert package in ci, package
    assert "installer/build_bundle.sh" not in ci and "installer/build_installer.sh" not in ci
    assert ci.index("python -m pytest") < ci.index("installer/windows_under_wine.sh")  # the README's command first
    for step in ("installer/build_bundle.sh", "installer/build_installer.sh"):
        assert step in script, step
    workflow_yaml = yaml.safe_load(workflow)
    runs = [step.get("run", "") for step in workflow_yaml["jobs"]["installer"]["steps"]]
    for stage in NATIVE_STAGES:
        assert f"bash installer/windows_under_wine.sh --native {stage}" in runs, stage
    assert "windows-" in workflow_yaml["jobs"]["installer"]["runs-on"]
    for phrase in ("/S", "--self-test", "Uninstall.exe", "--smoke-test-viewer"):
        assert phrase in script, phrase


# --- installer/windows_under_wine.sh ----------------------------------------------------------------------------------

def test_wine_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(WINE_SCRIPT)], check=True)
    assert os.access(WINE_SCRIPT, os.X_OK)


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="shellcheck is not installed")
def test_installer_scripts_pass_shellcheck() -> None:
    scripts = [WINE_SCRIPT, INSTALLER / "build_bundle.sh", INSTALLER / "build_installer.sh"]
    subprocess.run(["shellcheck", "-S", "warning", *map(str, scripts)], check=True)


def test_wine_script_stages_are_defined_and_native_ones_listed() -> None:
    script = WINE_SCRIPT.read_text()
    defined = set(re.findall(r"^stage_(\w+)\(\)", script, flags=re.MULTILINE))
    stage_lists = re.findall(r"ALL_STAGES=\(([^)]*)\)", script)
    assert len(stage_lists) == 2
    native, wine = (tuple(found.split()) for found in stage_lists)
    assert native == NATIVE_STAGES
    assert set(native) | set(wine) == defined
    assert wine[:4] == ("prefix", "python", "requirements", "freeze")


def test_wine_work_arounds_live_in_one_place() -> None:
    """Every Wine work-around is set in one block of the script, each with a comment naming the Wine gap."""
    script = WINE_SCRIPT.read_text()
    block = script[script.index("# ---- Wine work-arounds"):script.index("# ----------------", script.index("# ---- Wine work-arounds"))]
    for setting in ("ucrtbase=n,b", "KMP_AFFINITY=disabled", "icuuc", "| cat"):
        assert setting in block, setting
    for number in range(1, 7):
        assert f"# ({number})" in block
    assert script.count("WINEDLLOVERRIDES=") == 1 and script.count("KMP_AFFINITY=") == 1


def test_wine_helpers_implement_the_missing_exports() -> None:
    ucrt = (INSTALLER / "wine" / "ucrtbase_complex.c").read_text()
    for name in ("crealf", "cimagf", "creal", "cimag", "creall", "cimagl"):
        assert re.search(rf"\btw_{name}\(", ucrt), name
    assert "tw_ucnv_open" in (INSTALLER / "wine" / "icuuc_stub.c").read_text()


@pytest.mark.skipif(not shutil.which("x86_64-w64-mingw32-gcc"), reason="mingw-w64 is not installed")
def test_ucrtbase_forwarder_links(tmp_path: Path) -> None:
    """The forwarder links without a C runtime, with a forwarded export and the six accessors."""
    definition = tmp_path / "ucrtbase.def"
    names = ("crealf", "cimagf", "creal", "cimag", "creall", "cimagl")
    definition.write_text("LIBRARY ucrtbase.dll\nEXPORTS\n  printf = ucrtbase_wine.printf\n"
                          + "".join(f"  {name} = tw_{name}\n" for name in names))
    dll = tmp_path / "ucrtbase.dll"
    subprocess.run(["x86_64-w64-mingw32-gcc", "-O2", "-shared", "-nostdlib", "-Wl,-e,tw_dll_entry", "-o", str(dll),
                    str(INSTALLER / "wine" / "ucrtbase_complex.c"), str(definition)], check=True)
    pefile = pytest.importorskip("pefile")
    pe = pefile.PE(str(dll))
    exports = {symbol.name.decode(): symbol.forwarder for symbol in pe.DIRECTORY_ENTRY_EXPORT.symbols}
    assert exports["printf"] == b"ucrtbase_wine.printf"
    assert all(exports[name] is None for name in names)
    assert not hasattr(pe, "DIRECTORY_ENTRY_IMPORT")  # it must not import the runtime it stands in for


# --- installer/check_bundle_dlls.py -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dll_check() -> ModuleType:
    return load(INSTALLER / "check_bundle_dlls.py", "check_bundle_dlls")


def test_dll_check_accepts_bundled_and_system_dlls(dll_check: ModuleType) -> None:
    bundled = ["python311.dll", "MSVCP140.dll", "vcruntime140.dll", "torch_cpu.dll", "Qt6Core.dll"]
    imported = {"kernel32.dll": ["a.pyd"], "python311.dll": ["a.pyd"], "msvcp140.dll": ["torch_cpu.dll"],
                "api-ms-win-crt-runtime-l1-1-0.dll": ["a.pyd"], "ucrtbase.dll": ["b.dll"], "icuuc.dll": ["Qt6Core.dll"],
                "opengl32.dll": ["Qt6Gui.dll"], "VCRUNTIME140.dll": ["a.pyd"]}
    assert dll_check.problems(bundled, imported) == []


def test_dll_check_fails_without_the_vc_runtime(dll_check: ModuleType) -> None:
    found = dll_check.problems(["python311.dll"], {"MSVCP140.dll": ["torch_cpu.dll"],
                                                   "msvcp140_atomic_wait.dll": ["c10.dll"]})
    assert len(found) == 2 and all(message.startswith("VC++ runtime") for message in found)


def test_dll_check_fails_on_an_unknown_dll(dll_check: ModuleType) -> None:
    found = dll_check.problems(["python311.dll"], {"libiomp5md.dll": ["torch_cpu.dll"]})
    assert found == ["libiomp5md.dll is neither in the bundle nor a Windows system DLL (imported by torch_cpu.dll)"]


def test_spec_adds_the_vc_runtime_on_windows() -> None:
    text = SPEC.read_text()
    assert '"msvcp140*.dll"' in text and '"vcruntime140*.dll"' in text
    assert "analysis.binaries += added" in text


def test_label_comparison_tolerance(tmp_path: Path) -> None:
    numpy = pytest.importorskip("numpy")
    sitk = pytest.importorskip("SimpleITK")
    compare = load(INSTALLER / "compare_labels.py", "compare_labels")
    labels = numpy.zeros((20, 20, 20), dtype=numpy.uint8)
    labels[5:15, 5:15, 5:15] = 1
    nearly = labels.copy()
    nearly[5, 5, 5] = 0  # 1 voxel of 8000
    far = labels.copy()
    far[5:7] = 0
    paths = {}
    for name, array in (("a", labels), ("b", nearly), ("c", far)):
        paths[name] = str(tmp_path / f"{name}.nii.gz")
        sitk.WriteImage(sitk.GetImageFromArray(array), paths[name])
    assert compare.compare(paths["a"], paths["a"]) == []
    assert compare.compare(paths["a"], paths["b"]) == []
    assert compare.compare(paths["a"], paths["c"])


def test_dll_check_accepts_driver_loaders_but_not_old_runtimes(dll_check: ModuleType) -> None:
    """OpenVINO's GPU/NPU plugins import driver DLLs (present with the driver); GLUT's msvcr90 and MFC are not."""
    assert dll_check.problems([], {"OpenCL.dll": ["openvino_intel_gpu_plugin.dll"],
                                   "ze_loader.dll": ["openvino_intel_npu_vm_runtime.dll"]}) == []
    assert len(dll_check.problems([], {"msvcr90.dll": ["freeglut64.vc9.dll"], "mfc140u.dll": ["win32ui.pyd"]})) == 2


def test_spec_leaves_out_binaries_that_need_dlls_windows_lacks() -> None:
    tree = ast.parse(SPEC.read_text())
    values = {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body
              if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
              and node.targets[0].id == "UNWANTED_WINDOWS"}
    assert set(values["UNWANTED_WINDOWS"]) == {"opengl/dlls/", "pythonwin/"}

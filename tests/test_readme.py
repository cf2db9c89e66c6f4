"""Every snippet in the README runs as written: the quick start, the command-line examples and the Python API
example, on the demo model and the sample instead of the placeholders; the benchmark commands (about an hour of
work) are checked by the real argument parsers instead."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import SimpleITK as sitk
from tilewise.engine.commands.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "resources" / "demo" / "sample_t1.nii.gz"
VIEWER_START_TIMEOUT_S = 300  # a generous bound for a loaded 2-core machine; the test asserts it opens, not how fast


def _section(name: str, level: int = 2) -> str:
    """The README's text under the heading ``name`` of ``level`` (## or ###), up to its first sub-heading."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.split(r"\n#{2,} ", text.split(f"\n{'#' * level} {name}\n", 1)[1], maxsplit=1)[0]


def _blocks(section: str, language: str, level: int = 2) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", _section(section, level), flags=re.S)


def _commands(block: str) -> list[str]:
    """The block's command lines: continuation lines joined, comments and blank lines dropped."""
    joined = block.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _env() -> dict[str, str]:
    """The environment of the commands: UTF-8 output; OpenVINO conversions in the suite's shared cache."""
    return dict(os.environ, PYTHONIOENCODING="utf-8", LC_ALL="C.UTF-8", LANG="C.UTF-8")


def _bash(command: str, cwd: Path, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    bindir = str(Path(sys.executable).parent)  # this environment's tilewise and python first, as after `activate`
    env = dict(env, PATH=bindir + os.pathsep + env.get("PATH", ""))
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True,
                          encoding="utf-8", timeout=timeout)


# ---- Quick start -------------------------------------------------------------------------------------------------
def _quick_start() -> list[list[str]]:
    return [_commands(block) for block in _blocks("Quick start", "bash")]


def _install_commands() -> list[str]:
    return [command for block in _quick_start() for command in block if command.startswith("pip install ")]


def test_quick_start_system_packages_are_what_ci_installs_and_are_installed() -> None:
    [apt] = [command for block in _quick_start() for command in block if "apt-get install" in command]
    listed = [word for word in shlex.split(apt)[apt.split().index("install") + 1:] if not word.startswith("-")]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    ci_list = re.search(r'QT_DEBIAN_PACKAGES="([^"]*)"', ci, flags=re.S)
    assert ci_list is not None
    assert set(listed) == set(ci_list.group(1).split()), "README and .ci/run list different system packages"
    if shutil.which("dpkg-query") is None:
        pytest.skip("not a Debian system: cannot check that the packages are installed")
    status = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\n", *listed],
                            capture_output=True, text=True)
    assert status.returncode == 0, status.stderr
    # a set: with a second architecture (i386 for Wine) a library is listed once per architecture
    assert set(status.stdout.split("\n")[:-1]) == {f"{package} installed" for package in listed}


def test_quick_start_clone_and_virtual_environment(tmp_path: Path) -> None:
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse"], capture_output=True).returncode != 0:
        pytest.skip("this checkout is not a git repository: nothing to clone")
    block = next(block for block in _quick_start() if any(command.startswith("git clone") for command in block))
    steps = [command for command in block if "apt-get" not in command]  # the system packages: the test above
    script = " && ".join(command.replace("REPOSITORY", shlex.quote(str(ROOT))) for command in steps)
    completed = _bash(script + ' && python -c "import sys; print(sys.prefix)" && git log -1 --format=%H',
                      tmp_path, _env(), timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    prefix, head = completed.stdout.split()[-2:]
    assert Path(prefix) == tmp_path / "tilewise" / ".venv"
    assert (Path(prefix) / "bin" / "pip").exists()
    assert head == subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                                  text=True).stdout.strip()


def test_quick_start_test_command_is_what_ci_runs() -> None:
    [test_command] = [command for command in _install_commands() if "python -m pytest" in command]
    ci_lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert test_command in ci_lines


@pytest.mark.parametrize("path", ["CPU", "GPU"])
def test_quick_start_install_commands_resolve(path: str, tmp_path: Path) -> None:
    """pip resolves the install command (a dry run: nothing is downloaded or changed)."""
    candidates = [command for command in _install_commands() if "python -m pytest" not in command]
    [command] = [c for c in candidates if ("+cpu" in c) == (path == "CPU")]
    install = command.split(" && ")[0]
    assert install.endswith('".[gui,openvino]"')
    completed = _bash(install.replace("pip install ", f"{shlex.quote(sys.executable)} -m pip install --dry-run "
                                      "--quiet --report - ", 1), ROOT, _env(), timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout[completed.stdout.index("{"):])
    chosen = {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in report["install"]}
    torch_pin = re.search(r"torch==(\S+)", install).group(1)
    assert chosen.get("torch", _installed("torch")).split("+")[0] == torch_pin.split("+")[0]
    assert chosen["tilewise"]
    assert "openvino" in chosen or _installed("openvino")
    if path == "CPU":
        assert not any(name.startswith("nvidia-") for name in chosen), "the CPU path would install CUDA libraries"


def _installed(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return ""


def test_quick_start_viewer_opens(tmp_path: Path) -> None:
    """`tilewise` (the end of the install-and-run command) opens a window titled Tilewise."""
    if not os.environ.get("DISPLAY") or shutil.which("xwininfo") is None:
        pytest.skip("needs an X display (pytest-xvfb) and xwininfo (Debian's x11-utils)")
    [command] = [c for c in _install_commands() if "+cpu" in c]
    run = command.split(" && ")[1]
    assert run == "tilewise"
    env = dict(_env(), PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"],
               HOME=str(tmp_path))  # its own settings, not the user's
    viewer = subprocess.Popen([run], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, encoding="utf-8")
    try:
        deadline = time.monotonic() + VIEWER_START_TIMEOUT_S
        while time.monotonic() < deadline and viewer.poll() is None:
            tree = subprocess.run(["xwininfo", "-root", "-tree"], capture_output=True, text=True).stdout
            if '"Tilewise"' in tree:
                break
            time.sleep(1)
        assert viewer.poll() is None, viewer.communicate()[0][-3000:]
        assert '"Tilewise"' in tree, "no window titled Tilewise appeared"
    finally:
        viewer.kill()
        output = viewer.communicate()[0]
    assert "Traceback" not in output, output[-3000:]


# ---- Command line ------------------------------------------------------------------------------------------------
def _fill_in(command: str, image: Path, cases: Path, nrrd: Path) -> str:
    """The README's placeholders replaced by the demo model and the sample (and the CPU when there is no GPU)."""
    import torch

    command = command.replace("MODEL_DIR", "demo").replace("imagesTs/", f"{cases}/")
    command = command.replace("scan.nrrd", str(nrrd)).replace("scan.nii.gz", str(image))
    command = command.replace("ct.nii.gz", str(image))
    if not torch.cuda.is_available():
        command = command.replace("-device cuda", "-device cpu")
    return command


def test_command_line_examples_run_as_written(tmp_path: Path) -> None:
    """Each command of the block, on a 120 mm cube of the sample (one tile of the demo model: the first example's
    five folds with mirroring are 40 forward passes instead of 320)."""
    [block] = _blocks("Command line", "bash")
    commands = _commands(block)
    cube = sitk.ReadImage(str(SAMPLE))[33:153, 49:169, 37:157]
    image = tmp_path / "t1.nii.gz"
    sitk.WriteImage(cube, str(image))
    cases = tmp_path / "cases"
    cases.mkdir()
    shutil.copy(image, cases / "t1_0000.nii.gz")
    nrrd = tmp_path / "t1.nrrd"
    sitk.WriteImage(cube, str(nrrd))
    env = _env()
    outputs: dict[str, str] = {}
    for command in commands:
        filled = _fill_in(command, image, cases, nrrd)
        assert not re.search(r"\b(MODEL_DIR|imagesTs|scan\.|ct\.nii)", filled), filled
        completed = _bash(filled, tmp_path, env)
        assert completed.returncode == 0, f"{filled}\n{completed.stderr[-3000:]}"
        outputs[command] = completed.stdout
    for written in (tmp_path / "predictions" / "t1.nii.gz", tmp_path / "out" / "t1.nrrd",
                    tmp_path / "out" / "t1.nii.gz"):
        labels = sitk.ReadImage(str(written))
        assert labels.GetSize() == cube.GetSize() and labels.GetOrigin() == cube.GetOrigin(), written
    assert (tmp_path / "predictions" / "t1.npz").exists()
    summary = json.loads((tmp_path / "batch_out" / "batch_summary.json").read_text(encoding="utf-8"))
    assert [(case["case"], case["status"]) for case in summary["cases"]] == [("t1", "done")]
    assert sitk.ReadImage(str(tmp_path / "batch_out" / "t1.nii.gz")).GetSize() == cube.GetSize()
    assert sorted(path.name for path in (tmp_path / "onnx").glob("*.onnx")) == [f"fold_{f}.onnx" for f in range(5)]
    [bench_output] = [out for command, out in outputs.items() if command.startswith("tilewise bench")]
    bench = json.loads(bench_output.strip().splitlines()[-1])
    assert bench["speedup"] > 0
    assert "self-test passed" in outputs["tilewise --self-test"]
    assert re.fullmatch(r"tilewise \d+\.\d+\.\d+\S*\n", outputs["tilewise --version"])


# ---- Benchmark setup: parsed, not run (the full set takes about an hour) ------------------------------------------
def test_benchmark_commands_parse(tmp_path: Path) -> None:
    [block] = re.findall(r"```bash\n(.*?)```", _section("Benchmark setup", 3), re.S)
    parser = build_parser()
    checked = 0
    for line in _commands(block):
        loop = re.fullmatch(r"for (\w+) in ([^;]+); do (.*); done", line)
        expanded = [loop.group(3).replace("$" + loop.group(1), value) for value in loop.group(2).split()] \
            if loop else [line]
        for command in expanded:
            words = shlex.split(command.replace("$M", "MODEL_DIR"))
            if "=" in words[0] or words[:2] == ["pip", "install"]:
                continue  # the model folder's variable; the install the quick start covers
            if words[0] == "tilewise":
                parser.parse_args(words[1:])  # exits (SystemExit) on an unknown flag or a bad value
            else:
                assert words[0] == "python" and (ROOT / words[1]).is_file(), command
                helped = subprocess.run([sys.executable, str(ROOT / words[1]), "--help"], capture_output=True,
                                        text=True, encoding="utf-8", env=_env(), timeout=300)
                assert helped.returncode == 0 and "usage" in helped.stdout.lower(), helped.stderr[-2000:]
            checked += 1
    assert checked >= 12


# ---- Python API --------------------------------------------------------------------------------------------------
def test_python_api_example_runs_as_written(tmp_path: Path) -> None:
    [example] = _blocks("Python API", "python")
    code = example.replace('"MODEL_DIR"', '"demo"').replace('"ct.nii.gz"', repr(str(SAMPLE)))
    assert code != example, "the placeholders the test fills in are still in the README"
    completed = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                               encoding="utf-8", env=_env(), timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert re.search(r"^\d+/\d+  eta \d+s  region ", completed.stdout, flags=re.M)
    written = sitk.ReadImage(str(tmp_path / "out" / "ct.nii.gz"))
    assert written.GetSize() == sitk.ReadImage(str(SAMPLE)).GetSize()


# ---- DICOM in and out, Cascades -----------------------------------------------------------------------------------
def test_dicom_examples_run_as_written(tmp_path: Path) -> None:
    """The DICOM section's commands on a 120 mm cube of the sample written as a DICOM series (one tile of the demo
    model, preview preset: the section shows the output types, not the speed)."""
    from dicom_factory import write_ct_series

    [block] = _blocks("DICOM in and out", "bash", level=3)
    write_ct_series(sitk.ReadImage(str(SAMPLE))[33:153, 49:169, 37:157], tmp_path / "ct_series")
    env = _env()
    for command in _commands(block):
        filled = command.replace("MODEL_DIR", "demo --preset preview")
        assert "ct_series/" in filled and "MODEL_DIR" not in filled, filled
        completed = _bash(filled, tmp_path, env)
        assert completed.returncode == 0, f"{filled}\n{completed.stderr[-3000:]}"
    import pydicom

    seg = pydicom.dcmread(tmp_path / "out" / "ct_series_seg.dcm")
    rtstruct = pydicom.dcmread(tmp_path / "out" / "ct_series_rtstruct.dcm")
    source = pydicom.dcmread(next((tmp_path / "ct_series").iterdir()), stop_before_pixels=True)
    assert seg.Modality == "SEG" and rtstruct.Modality == "RTSTRUCT"
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID == \
        rtstruct.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID
    assert len([s for s in seg.SegmentSequence if s.SegmentNumber > 0]) == 3, "one segment per label of the demo model"


def test_cascade_example_parses() -> None:
    """The Cascades section's command goes through the real argument parser (tests/test_cascade.py runs a cascade)."""
    [block] = _blocks("Cascades", "bash", level=3)
    one_step, low_res, full_res = (build_parser().parse_args(shlex.split(command)[1:]) for command in _commands(block))
    assert {one_step.command, low_res.command, full_res.command} == {"predict"}
    assert one_step.model.endswith("__3d_cascade_fullres") and one_step.prev_stage_predictions is None
    # nnU-Net's two steps: the full-res stage reads the low-res stage's output folder
    assert low_res.model.endswith("__3d_lowres") and full_res.model.endswith("__3d_cascade_fullres")
    assert full_res.prev_stage_predictions == Path(low_res.output)

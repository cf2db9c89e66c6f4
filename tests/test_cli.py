"""The ``tilewise`` command line: predict (outputs, options, errors, Ctrl-C), models, and bare usage."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pickle
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import model_factory
from cli_helpers import ERROR_PREFIX, predict_args
from tilewise.engine import Predictor, get_preset, read_volume
from tilewise.engine.commands.cli import main
from tilewise.engine.data.readers import image_suffix

OBLIQUE = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # 90 degrees about z
SMALL = (24, 28, 32)  # numpy (z, y, x): a few tiles of the test model, quick on two cores


# ---- helpers ----------------------------------------------------------------------------------------------------


def image_files(folder: Path) -> list[Path]:
    if not folder.exists():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and image_suffix(p) is not None)


def leftovers(folder: Path) -> list[str]:
    """Hidden or temporary entries (staging folders, partial files) in ``folder``."""
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or "tmp" in p.name.lower())


def assert_same_geometry(image: sitk.Image, reference: sitk.Image) -> None:
    assert image.GetSize() == reference.GetSize()
    np.testing.assert_allclose(image.GetSpacing(), reference.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(image.GetDirection(), reference.GetDirection(), atol=1e-6)


def assert_written_like(output: Path, expected_labels: np.ndarray, source: Path) -> None:
    assert output.is_file(), f"{output} was not written"
    written = sitk.ReadImage(str(output))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), expected_labels)
    assert_same_geometry(written, sitk.ReadImage(str(source)))


@pytest.fixture(scope="module")
def preview(ct_model: Path) -> Predictor:
    """Our own predictor with the settings the CLI runs below use."""
    return Predictor(ct_model, get_preset("preview"), device="cpu")


def expected(predictor: Predictor, *files: Path) -> np.ndarray:
    labels = predictor.predict(read_volume(list(files))).labels
    assert set(np.unique(labels).tolist()) - {0}, "the prediction must contain foreground to mean anything"
    return labels


# ---- successful runs --------------------------------------------------------------------------------------------


def test_predict_one_file(tmp_path: Path, ct_model: Path, preview: Predictor, run_cli) -> None:
    source = model_factory.make_case(tmp_path / "in" / "ct_0000.nii.gz", "3d", shape=SMALL, direction=OBLIQUE,
                                     origin=(10.0, -20.0, 5.0), spacing=(1.2, 0.9, 1.5))
    out = tmp_path / "out"

    code, _, err = run_cli(predict_args(source, out, ct_model))

    assert code == 0, err
    assert ERROR_PREFIX not in err
    assert sorted(p.name for p in out.iterdir()) == ["ct.nii.gz"]
    assert_written_like(out / "ct.nii.gz", expected(preview, source), source)


def test_predict_folder_of_cases(tmp_path: Path, ct_model: Path, preview: Predictor, run_cli) -> None:
    inputs = tmp_path / "in"
    first = model_factory.case_files(inputs, "case_a", "3d", shape=SMALL, seed=1)[0]
    second = model_factory.case_files(inputs, "case_b", "3d", shape=(20, 30, 28), seed=2)[0]
    out = tmp_path / "out"

    code, _, err = run_cli(predict_args(inputs, out, ct_model))

    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["case_a.nii.gz", "case_b.nii.gz"]
    assert_written_like(out / "case_a.nii.gz", expected(preview, first), first)
    assert_written_like(out / "case_b.nii.gz", expected(preview, second), second)


def test_predict_keeps_the_file_type(tmp_path: Path, ct_model: Path, preview: Predictor, run_cli) -> None:
    source = model_factory.make_case(tmp_path / "scan_0000.nrrd", "3d", shape=SMALL, origin=(3.0, 4.0, 5.0))
    out = tmp_path / "out"

    code, _, err = run_cli(predict_args(source, out, ct_model))

    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["scan.nrrd"]
    assert_written_like(out / "scan.nrrd", expected(preview, source), source)


def test_predict_dicom_folder(tmp_path: Path, ct_model: Path, preview: Predictor, run_cli) -> None:
    from dicom_factory import write_dicom_series

    nifti = model_factory.make_case(tmp_path / "ct.nii.gz", "3d", shape=SMALL, origin=(-3.0, 7.0, 11.0))
    series = tmp_path / "series_17"
    write_dicom_series(sitk.ReadImage(str(nifti)), series, "1.2.826.0.1.3680043.2.1125.99.1", "img")
    out = tmp_path / "out"

    code, _, err = run_cli(predict_args(series, out, ct_model))

    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["series_17.nii.gz"]
    written = sitk.ReadImage(str(out / "series_17.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), expected(preview, series))
    assert_same_geometry(written, sitk.ReadImage(str(nifti)))


def test_save_probabilities(tmp_path: Path, ct_model: Path, preview: Predictor, run_cli) -> None:
    source = model_factory.make_case(tmp_path / "ct_0000.nii.gz", "3d", shape=SMALL)
    out = tmp_path / "out"

    code, _, err = run_cli(predict_args(source, out, ct_model, "--save_probabilities"))

    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["ct.nii.gz", "ct.npz", "ct.pkl"]
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "ct.nii.gz")))
    with np.load(out / "ct.npz") as archive:
        assert "probabilities" in archive.files
        probabilities = archive["probabilities"]
    num_classes = preview.bundle.label_manager.num_segmentation_heads
    assert probabilities.shape == (num_classes, *SMALL)
    np.testing.assert_allclose(probabilities.sum(0), 1.0, atol=1e-3)
    assert probabilities.min() >= 0.0
    assert (probabilities.argmax(0) == labels).mean() > 0.999
    with open(out / "ct.pkl", "rb") as handle:
        properties = pickle.load(handle)
    assert isinstance(properties, dict)
    np.testing.assert_allclose(properties["spacing"], read_volume(source).nnunet_spacing)


def test_report_holds_settings_and_timings(tmp_path: Path, ct_model: Path, run_cli) -> None:
    source = model_factory.make_case(tmp_path / "ct_0000.nii.gz", "3d", shape=SMALL)
    out, report = tmp_path / "out", tmp_path / "reports" / "r.json"

    code, _, err = run_cli(predict_args(source, out, ct_model, "--report", report))

    assert code == 0, err
    payload = json.loads(report.read_text())
    assert payload["preset"] == "preview"
    assert payload["device"] == "cpu"
    assert Path(payload["model"]) == ct_model
    assert payload["total_s"] >= 0
    assert [c["case"] for c in payload["cases"]] == ["ct"]
    case = payload["cases"][0]
    assert Path(case["output"]) == out / "ct.nii.gz"
    assert case["tiles"] >= 1
    for stage in ("read", "preprocess", "sliding_window", "export", "write"):
        assert isinstance(case["timings"][stage], float) and case["timings"][stage] >= 0, stage
    assert leftovers(report.parent) == []


def test_continue_prediction_skips_existing_outputs(tmp_path: Path, ct_model: Path, preview: Predictor,
                                                    run_cli) -> None:
    inputs = tmp_path / "in"
    done = model_factory.case_files(inputs, "done", "3d", shape=SMALL, seed=1)[0]
    todo = model_factory.case_files(inputs, "todo", "3d", shape=SMALL, seed=2)[0]
    out = tmp_path / "out"
    out.mkdir()
    existing = out / "done.nii.gz"
    shutil.copyfile(done, existing)  # clearly not a prediction, so an overwrite would show
    before_bytes, before_mtime = existing.read_bytes(), existing.stat().st_mtime_ns

    code, _, err = run_cli(predict_args(inputs, out, ct_model, "--continue_prediction"))

    assert code == 0, err
    assert existing.read_bytes() == before_bytes
    assert existing.stat().st_mtime_ns == before_mtime
    assert_written_like(out / "todo.nii.gz", expected(preview, todo), todo)

    code, _, err = run_cli(predict_args(inputs, out, ct_model))  # without the flag: predicted again

    assert code == 0, err
    assert_written_like(existing, expected(preview, done), done)


def test_predict_as_a_separate_process(tmp_path: Path, ct_model: Path, preview: Predictor) -> None:
    source = model_factory.make_case(tmp_path / "ct_0000.mha", "3d", shape=SMALL, seed=5)
    out = tmp_path / "out"

    completed = subprocess.run(
        [sys.executable, "-m", "tilewise.engine", *predict_args(source, out, ct_model)],
        capture_output=True, text=True, timeout=300,
    )

    assert completed.returncode == 0, completed.stderr
    assert ERROR_PREFIX not in completed.stderr
    assert sorted(p.name for p in out.iterdir()) == ["ct.mha"]
    assert_written_like(out / "ct.mha", expected(preview, source), source)


# ---- bad inputs: exit 2, one plain line naming the culprit, no output -------------------------------------------


def copy_model(model: Path, destination: Path) -> Path:
    return Path(shutil.copytree(model, destination))


def truncated(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


Setup = Callable[[Path, Callable[..., Path], Path], tuple[list[str], str, str]]


def missing_input(tmp, make_model, ct_model):
    source = tmp / "in" / "absent_0000.nii.gz"
    return predict_args(source, tmp / "out", ct_model), str(source), r"not found|does not exist|missing|no such"


def truncated_nifti(tmp, make_model, ct_model):
    source = truncated(model_factory.make_case(tmp / "in" / "cut_0000.nii.gz", "3d", shape=SMALL))
    return predict_args(source, tmp / "out", ct_model), str(source), r"truncat|corrupt|incomplete|cannot read|damaged"


def truncated_metaimage(tmp, make_model, ct_model):
    source = truncated(model_factory.make_case(tmp / "in" / "cut_0000.mha", "3d", shape=SMALL))
    return predict_args(source, tmp / "out", ct_model), str(source), r"truncat|corrupt|incomplete|cannot read|damaged"


def one_channel_file_given(tmp, make_model, ct_model):
    model = make_model("two_channel")
    source = model_factory.make_case(tmp / "in" / "mr_0000.nii.gz", "two_channel", shape=SMALL)
    return (predict_args(source, tmp / "out", model, "--channels", source), str(source), r"channel")


def one_channel_file_in_folder(tmp, make_model, ct_model):
    model = make_model("two_channel")
    model_factory.make_case(tmp / "in" / "mr_0000.nii.gz", "two_channel", shape=SMALL)
    return predict_args(tmp / "in", tmp / "out", model), str(tmp / "in"), r"mr_0001"


def single_file_of_a_two_channel_case(tmp, make_model, ct_model):
    model = make_model("two_channel")
    source = model_factory.make_case(tmp / "in" / "mr_0000.nii.gz", "two_channel", shape=SMALL)
    return predict_args(source, tmp / "out", model), str(source), r"channel"


def image_2d_for_3d_model(tmp, make_model, ct_model):
    image = sitk.GetImageFromArray(np.full((30, 30), 40, np.int16))
    image.SetSpacing((1.0, 1.0))
    source = tmp / "in" / "slice_0000.nrrd"
    source.parent.mkdir(parents=True)
    sitk.WriteImage(image, str(source))
    return predict_args(source, tmp / "out", ct_model), str(source), r"2D"


def model_without_checkpoints(tmp, make_model, ct_model):
    model = copy_model(ct_model, tmp / "model")
    for checkpoint in model.glob("fold_*/*.pth"):
        checkpoint.unlink()
    source = model_factory.make_case(tmp / "in" / "ct_0000.nii.gz", "3d", shape=SMALL)
    return predict_args(source, tmp / "out", model), str(model), r"fold|checkpoint"


def model_without_plans(tmp, make_model, ct_model):
    model = copy_model(ct_model, tmp / "model")
    (model / "plans.json").unlink()
    source = model_factory.make_case(tmp / "in" / "ct_0000.nii.gz", "3d", shape=SMALL)
    return predict_args(source, tmp / "out", model), str(model), r"plans\.json"


def untrusted_checkpoint(tmp, make_model, ct_model):
    model = copy_model(ct_model, tmp / "model")
    model_factory.make_untrusted_checkpoint(model)
    source = model_factory.make_case(tmp / "in" / "ct_0000.nii.gz", "3d", shape=SMALL)
    return predict_args(source, tmp / "out", model), str(model / "fold_0" / "checkpoint_final.pth"), r"--trust-model"


def unknown_preset(tmp, make_model, ct_model):
    source = model_factory.make_case(tmp / "in" / "ct_0000.nii.gz", "3d", shape=SMALL)
    args = predict_args(source, tmp / "out", ct_model)
    args[args.index("--preset") + 1] = "turbo"
    return args, "turbo", r"preset"


BAD_INPUTS = [
    pytest.param(missing_input, id="missing-input"),
    pytest.param(truncated_nifti, id="truncated-nii-gz"),
    pytest.param(truncated_metaimage, id="truncated-mha"),
    pytest.param(one_channel_file_given, id="channels-one-of-two"),
    pytest.param(one_channel_file_in_folder, id="folder-without-0001"),
    pytest.param(single_file_of_a_two_channel_case, id="file-without-0001"),
    pytest.param(image_2d_for_3d_model, id="2d-image-3d-model"),
    pytest.param(model_without_checkpoints, id="no-checkpoints"),
    pytest.param(untrusted_checkpoint, id="untrusted-checkpoint"),
    pytest.param(model_without_plans, id="no-plans-json"),
    pytest.param(unknown_preset, id="unknown-preset"),
]


@pytest.mark.parametrize("setup", BAD_INPUTS)
def test_bad_input_fails_with_one_line(tmp_path: Path, make_model, ct_model: Path, run_cli, setup: Setup) -> None:
    args, culprit, problem = setup(tmp_path, make_model, ct_model)
    out = tmp_path / "out"
    executed_before = len(model_factory.UNTRUSTED_EXECUTIONS)

    code, stdout, err = run_cli(args)

    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected exactly one line on stderr, got:\n{err}"
    assert lines[0].startswith(ERROR_PREFIX), lines[0]
    assert culprit in lines[0]
    assert re.search(problem, lines[0], flags=re.IGNORECASE), lines[0]
    assert "Traceback" not in err + stdout
    assert image_files(out) == []
    assert leftovers(out) == []
    assert len(model_factory.UNTRUSTED_EXECUTIONS) == executed_before, "an untrusted payload was executed"


def test_trust_model_loads_an_untrusted_checkpoint(tmp_path: Path, ct_model: Path, preview: Predictor,
                                                   run_cli) -> None:
    model = copy_model(ct_model, tmp_path / "model")
    model_factory.make_untrusted_checkpoint(model)
    source = model_factory.make_case(tmp_path / "ct_0000.nii.gz", "3d", shape=SMALL)
    out = tmp_path / "out"

    code, _, err = run_cli(predict_args(source, out, model))
    assert code == 2, err
    assert not image_files(out)

    code, _, err = run_cli(predict_args(source, out, model, "--trust-model"))

    assert code == 0, err
    assert_written_like(out / "ct.nii.gz", expected(preview, source), source)


def test_missing_required_option_is_a_usage_error(tmp_path: Path, ct_model: Path, run_cli) -> None:
    code, _, err = run_cli(["predict", "-o", tmp_path / "out", "-m", ct_model])

    assert code == 2
    assert "usage:" in err
    assert "-i" in err
    assert not (tmp_path / "out").exists()


# ---- Ctrl-C -----------------------------------------------------------------------------------------------------


def _read_available(fd: int, timeout: float) -> bytes:
    """What the terminal ``fd`` has to read within ``timeout`` seconds (b'' if nothing; raises EOFError at the end)."""
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return b""
    try:
        data = os.read(fd, 65536)
    except OSError:  # Linux: EIO once the child closed its side
        raise EOFError from None
    if not data:
        raise EOFError
    return data


def test_ctrl_c_stops_without_partial_output(tmp_path: Path, ct_model: Path) -> None:
    source = model_factory.make_case(tmp_path / "in" / "big_0000.nii.gz", "3d", shape=(96, 96, 96))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "tilewise.engine", "predict", "-i", str(source), "-o", str(out),
               "-m", str(ct_model), "--preset", "reference", "-device", "cpu", "--backend", "torch"]
    # PyTorch: OpenVINO runs these 80 tiles in about 2 s, too fast to interrupt reliably mid-run
    # stderr on a terminal, so that the progress bar shows when the sliding window is running
    terminal, child_side = pty.openpty()
    fcntl.ioctl(child_side, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    progress = re.compile(rb"\b([1-9]\d*)/(\d+) \[")
    seen = b""
    try:
        # A shell that starts CI in the background makes its children ignore SIGINT; a terminal's Ctrl-C never is.
        with subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=child_side,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"},
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)) as process:
            os.close(child_side)
            child_side = -1
            try:
                deadline = time.monotonic() + 240
                while not (match := progress.search(seen)):
                    assert time.monotonic() < deadline, "no tile finished in time:\n" + seen.decode(errors="replace")
                    seen += _read_available(terminal, 0.2)
                assert int(match[1]) < int(match[2]), "the sliding window finished before it could be interrupted"
                assert process.poll() is None, seen.decode(errors="replace")
                process.send_signal(signal.SIGINT)
                code = process.wait(timeout=30)
                with contextlib.suppress(EOFError):
                    while chunk := _read_available(terminal, 1.0):
                        seen += chunk
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
    finally:
        os.close(terminal)
        if child_side >= 0:
            os.close(child_side)
    stderr = seen.decode(errors="replace")

    assert code == 130, stderr
    assert "interrupted" in stderr
    assert "Traceback" not in stderr
    assert image_files(out) == []
    assert not out.exists() or list(out.iterdir()) == []


# ---- other commands ---------------------------------------------------------------------------------------------


def test_models_lists_model_folders_beneath(tmp_path: Path, ct_model: Path, run_cli) -> None:
    results = tmp_path / "results"
    listed = copy_model(ct_model, results / "Dataset901_TilewiseCT" / ct_model.name)
    broken = copy_model(ct_model, results / "Dataset777_Broken" / ct_model.name)
    for checkpoint in broken.glob("fold_*/*.pth"):
        checkpoint.unlink()

    code, out, err = run_cli(["models", results])

    assert code == 0, err
    lines = out.splitlines()
    assert str(listed) in lines
    assert not any(str(broken) in line for line in lines)
    assert "3d_fullres" in out


def test_models_with_nothing_found(tmp_path: Path, run_cli) -> None:
    code, out, _ = run_cli(["models", tmp_path])
    assert code == 0
    assert str(tmp_path) in out
    assert "no nnU-Net models" in out


def test_models_with_nothing_in_the_usual_places_says_where_it_looked(tmp_path: Path, run_cli, monkeypatch) -> None:
    from tilewise.engine.model import catalog

    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setattr(catalog, "TOTALSEGMENTATOR_RESULTS", tmp_path / "totalseg")
    code, out, _ = run_cli(["models"])
    assert code == 0
    assert str(tmp_path / "results") in out and "$nnUNet_results" in out
    assert "tilewise models FOLDER" in out and "-m demo" in out


def test_help_prints_usage(capfd) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    out = capfd.readouterr().out
    assert exited.value.code == 0
    assert "usage: tilewise" in out
    for command in ("predict", "bench", "models"):
        assert command in out


@pytest.mark.parametrize("argv", [[], ["SCAN"], ["SCAN", "-m", "demo"], ["-m", "demo"]])
def test_no_command_opens_the_viewer(argv: list[str], monkeypatch, tmp_path: Path) -> None:
    import tilewise.engine.commands.cli as cli

    scan = model_factory.make_case(tmp_path / "scan.nii.gz", "3d", shape=SMALL)
    argv = [str(scan) if a == "SCAN" else a for a in argv]
    opened: list[list[str]] = []
    monkeypatch.setattr(cli, "open_viewer", lambda arguments: opened.append(arguments) or 0)
    assert main(argv) == 0
    assert opened == [argv]


@pytest.mark.parametrize(("word", "hint"), [("predcit", "did you mean 'predict'?"), ("bnech", "did you mean 'bench'?"),
                                            ("frobnicate", "commands: predict, bench")])
def test_an_unknown_command_is_a_one_line_usage_error(word: str, hint: str, monkeypatch, run_cli) -> None:
    import tilewise.engine.commands.cli as cli

    opened: list = []
    monkeypatch.setattr(cli, "open_viewer", lambda arguments: opened.append(arguments) or 0)
    code, out, err = run_cli([word, "-i", "x", "-o", "y", "-m", "demo"])
    assert code == 2 and not opened
    assert err.strip() == err.strip().splitlines()[0]
    assert f"unknown command '{word}'" in err and hint in err


def test_version(run_cli) -> None:
    code, out, _ = run_cli(["--version"])
    assert code == 0 and re.fullmatch(r"tilewise \S+", out.strip())


def test_without_a_display_the_viewer_explains_how_to_run_headless(monkeypatch, run_cli) -> None:
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    code, _, err = run_cli([])
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "no display" in err and "tilewise predict" in err and "--self-test" in err


def test_viewer_missing_is_a_clear_error(monkeypatch, capfd) -> None:
    import tilewise.engine.commands.cli as cli

    monkeypatch.setattr(cli, "VIEWER_REQUIREMENTS", ("napari", "module_that_is_not_installed"))
    assert main([]) == 2
    err = capfd.readouterr().err
    assert "module_that_is_not_installed is missing" in err and "pip install 'tilewise[gui]'" in err

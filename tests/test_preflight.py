"""Cheap checks first: paths, input headers, DICOM series, zip safety and the model folder are refused before the
model loads (no checkpoint is read), each with one line and the right exit code (2: a path or input problem, 3: the
destination is read-only, not writable or full)."""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tilewise.engine.commands import preflight as preflight_module
from tilewise.engine.commands.cli import build_parser, main
from tilewise.engine.data.dicom.zips import MAX_RATIO, readable_size, unpack
from tilewise.engine.errors import InputError
from tilewise.engine.model import bundle as bundle_module
from tilewise.resources import demo_model_dir

DEMO = demo_model_dir()
SAMPLE = DEMO.parent / "sample_t1.nii.gz"
ERROR_PREFIX = "tilewise: error: "


@pytest.fixture
def checkpoints_read(monkeypatch) -> list[Path]:
    """Every checkpoint the run reads (none may be, for what the pre-flight refuses)."""
    read: list[Path] = []
    real = bundle_module.load_checkpoint

    def counting(path: Path, trust: bool = False):
        read.append(path)
        return real(path, trust)

    monkeypatch.setattr(bundle_module, "load_checkpoint", counting)
    return read


def predict(source: Path, out: Path, *extra: object, model: object = "demo") -> list:
    return ["predict", "-i", source, "-o", out, "-m", model, "-device", "cpu", "--preset", "preview", *extra]


def assert_one_line(code: int, out: str, err: str, expected_code: int, *words: str) -> str:
    assert code == expected_code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith(ERROR_PREFIX), lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    assert "Traceback" not in out + err
    return lines[0]


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "in" / "t1.nii.gz"
    path.parent.mkdir()
    shutil.copy(SAMPLE, path)
    return path


# ---- -o and the outputs -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["itself", "symlink", "hard-link"])
def test_output_that_is_the_input_is_refused_before_the_model_loads(tmp_path: Path, image: Path, run_cli,
                                                                    checkpoints_read, how: str) -> None:
    target = {"itself": image, "symlink": tmp_path / "link.nii.gz", "hard-link": tmp_path / "hard.nii.gz"}[how]
    if how == "symlink":
        target.symlink_to(image)
    if how == "hard-link":
        os.link(image, target)
    before = image.read_bytes()

    code, out, err = run_cli(predict(image, target))

    assert_one_line(code, out, err, 2, str(target), "input")
    assert checkpoints_read == []
    assert image.read_bytes() == before


def test_output_name_that_is_an_existing_folder_is_refused(tmp_path: Path, image: Path, run_cli,
                                                           checkpoints_read) -> None:
    (tmp_path / "out" / "t1.nii.gz").mkdir(parents=True)

    code, out, err = run_cli(predict(image, tmp_path / "out"))

    assert_one_line(code, out, err, 2, str(tmp_path / "out" / "t1.nii.gz"), "existing folder")
    assert checkpoints_read == []


def test_output_folder_that_is_a_file_is_refused(tmp_path: Path, image: Path, run_cli, checkpoints_read) -> None:
    (tmp_path / "results").write_text("not a folder")

    code, out, err = run_cli(predict(image, tmp_path / "results"))

    assert_one_line(code, out, err, 2, "is a file")
    assert checkpoints_read == []


@pytest.fixture
def small_mount(tmp_path: Path) -> Iterator[callable]:
    """Mount a tmpfs (root only, as in CI): ``small_mount(options)`` returns its folder; unmounted afterwards."""
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        folder = tmp_path / f"mount{len(mounted)}"
        folder.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True,
                                check=False)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.decode().strip()[:80]})")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], capture_output=True, check=False)


def test_read_only_destination_is_exit_3_before_the_model_loads(tmp_path: Path, image: Path, run_cli,
                                                                checkpoints_read, small_mount) -> None:
    folder = small_mount("ro,size=1m")

    code, out, err = run_cli(predict(image, folder / "out"))

    assert_one_line(code, out, err, 3, "read-only")
    assert checkpoints_read == []


def test_full_destination_is_exit_3_before_the_model_loads(tmp_path: Path, run_cli, checkpoints_read,
                                                           small_mount) -> None:
    source = tmp_path / "t1.nii"  # uncompressed: the label map needs about 8 MB
    sitk.WriteImage(sitk.ReadImage(str(SAMPLE)), str(source))
    folder = small_mount("size=1m")

    code, out, err = run_cli(predict(source, folder))

    line = assert_one_line(code, out, err, 3, "MB", "free")
    assert "0.0 G" not in line
    assert checkpoints_read == []
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize(("failure", "expected_code", "words"), [
    (errno.EACCES, 3, "you do not have permission"), (errno.EROFS, 3, "read-only"), (errno.ENOSPC, 3, "the disk is full")])
def test_unwritable_destination_injected(tmp_path: Path, image: Path, run_cli, checkpoints_read, monkeypatch,
                                         failure: int, expected_code: int, words: str) -> None:
    """Where no file system can be mounted: the OS call fails as it would."""
    def refuse(*args, **kwargs):
        raise OSError(failure, os.strerror(failure))

    monkeypatch.setattr(preflight_module.tempfile, "mkstemp", refuse)

    code, out, err = run_cli(predict(image, tmp_path / "out"))

    assert_one_line(code, out, err, expected_code, words)
    assert checkpoints_read == []


# ---- inputs -------------------------------------------------------------------------------------------------------
def _write(array: np.ndarray, path: Path, vector: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=vector), str(path))
    return path


def test_2d_image_for_a_3d_model_is_refused_before_the_model_loads(tmp_path: Path, run_cli, checkpoints_read) -> None:
    source = _write(np.zeros((64, 64), np.float32), tmp_path / "slice.nii.gz")

    code, out, err = run_cli(predict(source, tmp_path / "out"))

    assert_one_line(code, out, err, 2, str(source), "2D")
    assert checkpoints_read == []


def test_4d_image_is_refused_before_the_model_loads(tmp_path: Path, run_cli, checkpoints_read) -> None:
    source = _write(np.zeros((2, 8, 16, 16), np.float32), tmp_path / "series.nii.gz")

    code, out, err = run_cli(predict(source, tmp_path / "out"))

    assert_one_line(code, out, err, 2, str(source), "4D")
    assert checkpoints_read == []


def test_image_with_vector_voxels_for_a_one_channel_model_is_refused(tmp_path: Path, run_cli,
                                                                      checkpoints_read) -> None:
    source = _write(np.zeros((8, 16, 16, 3), np.float32), tmp_path / "rgb.nii.gz", vector=True)

    code, out, err = run_cli(predict(source, tmp_path / "out"))

    assert_one_line(code, out, err, 2, str(source), "3 channel(s)", "needs 1 (T1)")
    assert checkpoints_read == []


def test_zip_slip_archive_is_refused_before_the_model_loads(tmp_path: Path, run_cli, checkpoints_read) -> None:
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as opened:
        opened.writestr("../../evil.dcm", b"\0" * 128 + b"DICM")

    code, out, err = run_cli(predict(archive, tmp_path / "out"))

    assert_one_line(code, out, err, 2, str(archive), "outside")
    assert checkpoints_read == []
    assert not (tmp_path.parent / "evil.dcm").exists()


def test_broken_dicom_series_is_refused_before_the_model_loads(tmp_path: Path, run_cli, checkpoints_read) -> None:
    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "IM0001").write_bytes(b"\0" * 128 + b"DICM" + b"not a header")

    code, out, err = run_cli(predict(folder, tmp_path / "out"))

    assert_one_line(code, out, err, 2, str(folder))
    assert checkpoints_read == []


# ---- the model folder ---------------------------------------------------------------------------------------------
def test_model_folder_that_does_not_exist_says_so(tmp_path: Path, image: Path, run_cli) -> None:
    missing = tmp_path / "no_such_model"

    code, out, err = run_cli(predict(image, tmp_path / "out", model=missing))

    line = assert_one_line(code, out, err, 2, str(missing), "not found")
    assert "dataset.json" not in line


def test_fold_folder_suggests_its_parent(tmp_path: Path, image: Path, run_cli) -> None:
    fold = DEMO / "fold_0"

    code, out, err = run_cli(predict(image, tmp_path / "out", model=fold))

    assert_one_line(code, out, err, 2, str(fold), f"give the model folder {DEMO}", "-f 0")


def test_batch_refuses_an_output_file_and_a_missing_model_before_loading(tmp_path: Path, image: Path, run_cli,
                                                                          checkpoints_read) -> None:
    (tmp_path / "results").write_text("a file")
    code, out, err = run_cli(["batch", "-i", image.parent, "-o", tmp_path / "results", "-m", "demo",
                              "-device", "cpu"])
    assert_one_line(code, out, err, 2, "is a file")

    code, out, err = run_cli(["batch", "-i", image.parent, "-o", tmp_path / "out", "-m", tmp_path / "nothing",
                              "-device", "cpu"])
    assert_one_line(code, out, err, 2, "model folder not found")
    assert checkpoints_read == []


def test_preflight_of_a_good_job_reads_no_checkpoint(tmp_path: Path, image: Path, checkpoints_read) -> None:
    args = build_parser().parse_args([str(a) for a in predict(image, tmp_path / "out")])
    preflight_module.preflight(args)
    assert checkpoints_read == []
    assert not (tmp_path / "out").exists(), "the pre-flight writes nothing"


# ---- messages ------------------------------------------------------------------------------------------------------
def test_help_lists_self_test_and_version(capfd) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capfd.readouterr().out
    assert "--self-test" in out and "--version" in out


def test_sizes_are_given_in_units_that_show_the_numbers() -> None:
    assert readable_size(512) == "512 bytes"
    assert readable_size(45_000) == "45.0 KB"
    assert readable_size(8_675_289) == "8.7 MB"
    assert readable_size(3 * 10**9) == "3.00 GB"


def test_zip_bomb_refusal_shows_its_sizes(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as opened:
        opened.writestr("IM0001", b"\0" * (MAX_RATIO * 20_000))
    with pytest.raises(InputError) as caught:
        unpack(archive)
    assert "0.0 GiB" not in str(caught.value) and "MB" in str(caught.value) and "KB" in str(caught.value)
    assert not any(Path(tempfile.gettempdir()).glob("tilewise-unzip-*/IM0001"))


def test_batch_into_a_full_destination_is_exit_3_before_loading(tmp_path: Path, run_cli, checkpoints_read,
                                                                small_mount) -> None:
    for name in ("a", "b"):
        (tmp_path / "in").mkdir(exist_ok=True)
        sitk.WriteImage(sitk.ReadImage(str(SAMPLE)), str(tmp_path / "in" / f"{name}_0000.nii"))
    folder = small_mount("size=1m")

    code, out, err = run_cli(["batch", "-i", tmp_path / "in", "-o", folder, "-m", "demo", "-device", "cpu"])

    assert_one_line(code, out, err, 3, "MB", "free")
    assert checkpoints_read == []
    assert list(folder.iterdir()) == []

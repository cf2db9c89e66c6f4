"""``--nnunet-exact`` gives nnU-Net's own labels voxel for voxel: its float16 sums, tile order and export."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import model_factory
from tilewise.engine import Predictor, get_preset, read_volume
from tilewise.engine.commands.cli import main
from tilewise.engine.errors import TilewiseError

OBLIQUE = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


@pytest.mark.parametrize(("kind", "case_kwargs", "mirroring"), [
    pytest.param("3d", {}, True, id="3d_fullres-mirrored"),
    pytest.param("3d", {"direction": OBLIQUE, "origin": (10.0, -20.0, 5.0), "spacing": (1.2, 0.9, 1.5)}, False,
                 id="oblique-no-mirroring"),  # test_parity's oblique case: nnU-Net's stock run is shared
    pytest.param("2d", {}, True, id="2d"),
    pytest.param("regions", {}, False, id="region-based"),
    pytest.param("aniso", {"spacing": (0.8, 0.8, 4.0), "shape": (14, 60, 52)}, False, id="anisotropic-separate-z"),
    pytest.param("transposed", {}, False, id="transposed-axes"),
])
def test_exact_mode_equals_stock_nnunet(make_model, tmp_path: Path, kind: str, case_kwargs: dict,
                                        mirroring: bool) -> None:
    model_dir = make_model(kind)
    files = model_factory.case_files(tmp_path, "case", kind, **case_kwargs)
    stock = model_factory.nnunet_reference(model_dir, files, folds=(0,), step=0.5, mirroring=mirroring)

    preset = get_preset("reference").with_overrides(mirroring=mirroring)
    result = Predictor(model_dir, preset, device="cpu", nnunet_exact=True).predict(read_volume(files))

    assert result.labels.shape == stock.shape
    assert int((result.labels != stock).sum()) == 0
    assert len(np.unique(stock)) > 1


def test_exact_mode_averages_folds_like_nnunet(make_model, tmp_path: Path) -> None:
    model_dir = make_model("3d", folds=(0, 1, 2))
    files = model_factory.case_files(tmp_path, "case", "3d", seed=3)
    stock = model_factory.nnunet_reference(model_dir, files, folds=(0, 1, 2), step=0.5, mirroring=False)
    events = []
    predictor = Predictor(model_dir, get_preset("reference").with_overrides(mirroring=False), device="cpu",
                          nnunet_exact=True)
    result = predictor.predict(read_volume(files), on_event=events.append)
    assert int((result.labels != stock).sum()) == 0
    assert [e.done for e in events] == list(range(1, len(events) + 1)), "one count over all folds"
    assert events[-1].total == len(events) == result.tiles * 3


def test_exact_mode_matches_the_nnunet_cli_file(ct_model: Path, tmp_path: Path, capfd) -> None:
    source = model_factory.make_case(tmp_path / "in" / "ct_0000.nii.gz", "3d", shape=(40, 48, 56), seed=5)
    entry = "from nnunetv2.inference.predict_from_raw_data import predict_entry_point_modelfolder as m; m()"
    subprocess.run([sys.executable, "-c", entry, "-i", str(source.parent), "-o", str(tmp_path / "nnunet"),
                    "-m", str(ct_model), "-f", "0", "-step_size", "0.5", "-device", "cpu", "--disable_progress_bar",
                    "-npp", "1", "-nps", "1"], check=True, capture_output=True, timeout=600)
    code = main(["predict", "-i", str(source), "-o", str(tmp_path / "ours"), "-m", str(ct_model), "-f", "0",
                 "-device", "cpu", "--nnunet-exact"])
    assert code == 0, capfd.readouterr().err
    theirs = sitk.ReadImage(str(tmp_path / "nnunet" / "ct.nii.gz"))
    ours = sitk.ReadImage(str(tmp_path / "ours" / "ct.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(theirs))
    assert ours.GetSpacing() == theirs.GetSpacing() and ours.GetOrigin() == theirs.GetOrigin()
    assert ours.GetDirection() == theirs.GetDirection()


def test_exact_mode_refuses_openvino(ct_model: Path) -> None:
    with pytest.raises(TilewiseError, match="--nnunet-exact"):
        Predictor(ct_model, get_preset("fast").with_overrides(backend="openvino"), device="cpu", nnunet_exact=True)

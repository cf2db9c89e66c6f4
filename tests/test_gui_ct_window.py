"""CT window presets: standard width / level, offered only when the image (or the model) is CT."""
from __future__ import annotations

from pathlib import Path

import pytest

import model_factory
from tilewise.gui.panels.ct_window import CT_WINDOWS, looks_like_ct
from gui_fixtures import open_image as _open, without_models

STANDARD = {"brain": (80, 40), "soft_tissue": (400, 40), "lung": (1500, -600), "bone": (1800, 400)}


@pytest.fixture(autouse=True)
def no_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """The conftest viewer (built after this) finds no model at all (no demo, no $nnUNet_results)."""
    without_models(monkeypatch)


def test_each_window_sets_the_standard_width_and_level(gui, qtbot, ct_model: Path, ct_case: Path) -> None:
    viewer, widget = gui
    widget.model_panel.select(ct_model)
    [image] = _open(qtbot, widget, ct_case)
    assert widget.image_panel.ct_row.isVisible()
    buttons = widget.image_panel.ct_window.buttons
    assert [buttons[w.key].text() for w in CT_WINDOWS] == ["Brain", "Soft tissue", "Lung", "Bone"]
    for key, (width, level) in STANDARD.items():
        buttons[key].click()
        assert image.contrast_limits == pytest.approx([level - width / 2, level + width / 2])
        assert [k for k, b in buttons.items() if b.isChecked()] == [key], "the window in use is shown pressed"
        assert f"width {width} HU, level {level} HU" in buttons[key].toolTip()
    image.contrast_limits = (-100, 300)  # the person drags napari's contrast slider
    assert not any(b.isChecked() for b in buttons.values())


def test_windows_are_offered_only_for_ct(gui, qtbot, ct_model: Path, tmp_path: Path) -> None:
    viewer, widget = gui
    assert widget.model_panel.current() is None
    mr = model_factory.make_case(tmp_path / "mr_0000.nii.gz", "two_channel")  # MR-like: intensities >= 0
    ct = model_factory.make_case(tmp_path / "ct_0000.nii.gz", "3d")           # air at -1000 HU
    [mr_layer] = _open(qtbot, widget, mr)
    assert not widget.image_panel.ct_row.isVisible(), "an MR image gets no CT windows"
    [ct_layer] = _open(qtbot, widget, ct)
    assert widget.image_panel.channel_combos[0].currentData() == "ct_0000"
    panel = widget.image_panel
    assert panel.ct_row.isVisible() and panel.ct_window.layer is ct_layer, "intensities below -500: a CT"
    widget.select_image("mr_0000")
    assert not widget.image_panel.ct_row.isVisible()
    widget.model_panel.select(ct_model)  # the model's channel is named CT: offer them for its image
    assert widget.image_panel.ct_row.isVisible() and widget.image_panel.ct_window.layer is mr_layer

    widget.image_panel.ct_window.buttons["bone"].click()
    assert mr_layer.contrast_limits == pytest.approx([-500, 1300])
    assert ct_layer.contrast_limits != mr_layer.contrast_limits, "only the image of the CT channel changes"


def test_channel_names_that_mean_ct() -> None:
    assert all(looks_like_ct([name]) for name in ("CT", "ct", "CT_arterial", "noncontrast CT", "CTA"))
    assert not any(looks_like_ct([name]) for name in ("T1", "T2", "FLAIR", "SPECT", "post-contrast", "image"))


def test_a_ct_is_first_shown_with_a_ct_window_and_dicom_modality_decides(gui, qtbot, ct_case: Path,
                                                                          tmp_path: Path) -> None:
    import numpy as np
    import pydicom
    import SimpleITK as sitk
    from test_gui_dicom_open import write_series

    viewer, widget = gui
    [ct] = _open(qtbot, widget, ct_case)  # NIfTI in HU: the soft-tissue window
    assert ct.contrast_limits == pytest.approx([-160, 240])
    assert widget.image_panel.ct_window.current() == "soft_tissue"

    def series(name: str, modality: str, array: np.ndarray, window: tuple[str, str] | None) -> Path:
        image = sitk.GetImageFromArray(array)
        files = write_series(tmp_path / name, image, f"1.2.826.0.1.3680043.2.1125.79.{len(name)}",
                             lambda i: f"IM{i:04d}.dcm")
        for path in files:
            header = pydicom.dcmread(path)
            header.Modality = modality
            if window is not None:
                header.WindowCenter, header.WindowWidth = window
            header.save_as(path)
        return files[0]

    rng = np.random.default_rng(3)
    positive = rng.integers(0, 3000, (4, 12, 10)).astype(np.int16)  # a CT stored without negative values
    [dicom_ct] = _open(qtbot, widget, series("ct", "CT", positive, ("50", "350")))
    assert widget.image_panel.ct_row.isVisible(), "Modality CT, although no voxel is below -500"
    assert dicom_ct.contrast_limits == pytest.approx([-125, 225]), "the window the DICOM files name"
    negative = rng.integers(-2000, 2000, (4, 12, 10)).astype(np.int16)  # e.g. an MR phase image
    _open(qtbot, widget, series("mr", "MR", negative, None))
    assert not widget.image_panel.ct_row.isVisible(), "Modality MR: no CT windows, whatever the intensities"
    widget.select_image(ct.name)
    widget.image_panel.ct_window.apply("bone")
    widget.select_image(dicom_ct.name)
    widget.select_image(ct.name)
    assert widget.image_panel.ct_window.current() == "bone", "the default is applied once, never over a choice"

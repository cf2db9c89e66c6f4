"""The Run step says, before Run, when the chosen image is not what the model was trained on (the engine's
suitability check, run off the GUI thread), in plain words, and the person can still run it."""
from __future__ import annotations

from pathlib import Path

from gui_fixtures import open_image
from image_factory import ct_like
from tilewise.resources import sample_path

CHECK_TIMEOUT_MS = 60_000


def test_the_demo_brain_model_warns_before_run_about_a_ct(gui, qtbot, tmp_path: Path) -> None:
    _, widget = gui  # the demo model (brain T1 MR) is the default
    warning = widget.run_panel.fit_warning

    open_image(qtbot, widget, ct_like(tmp_path / "ct.nii.gz"))

    qtbot.waitUntil(warning.isVisible, timeout=CHECK_TIMEOUT_MS)
    text = warning.text()
    assert "This model was trained on brain MR; this image looks like CT" in text
    assert "you can still run it" in text and "\n" not in text
    assert widget.run_panel.run_button.isEnabled(), "a warning, not a refusal"


def test_the_warning_goes_when_the_sample_t1_is_chosen(gui, qtbot, tmp_path: Path) -> None:
    _, widget = gui
    warning = widget.run_panel.fit_warning
    open_image(qtbot, widget, ct_like(tmp_path / "ct.nii.gz"))
    qtbot.waitUntil(warning.isVisible, timeout=CHECK_TIMEOUT_MS)

    open_image(qtbot, widget, sample_path())  # a brain T1, what the model was trained on: nothing to say

    qtbot.waitUntil(lambda: not warning.isVisible(), timeout=CHECK_TIMEOUT_MS)
    assert warning.text() == ""

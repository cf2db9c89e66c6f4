"""A streaming case's label file written slab by slab as the export makes it (issue 27, part 4): the file is the
whole-volume run's labels with the input's geometry, the labels are never held whole, and a failed or cancelled run
leaves nothing under the output's name."""
from __future__ import annotations

from pathlib import Path

import model_factory
import numpy as np
import pytest
import SimpleITK as sitk
from tilewise.engine import Cancelled, CancelToken, Predictor, TileEvent, get_preset, read_volume
from tilewise.engine.batch.stages import CaseStages, run_in_row
from tilewise.engine.data.cases import Case


def _predictor(model: Path, streaming: bool) -> Predictor:
    return Predictor(model, get_preset("preview").with_overrides(tile_step=0.5, backend="torch"), device="cpu",
                     streaming=streaming)


@pytest.fixture
def long_case(tmp_path: Path) -> Path:
    """Several tile steps along z, an oblique direction and an origin: the file's header must carry them."""
    return model_factory.make_case(tmp_path / "long_0000.nii.gz", "3d", shape=(72, 40, 44), seed=8,
                                   direction=(0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0), origin=(4.0, -9.0, 2.5))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_the_label_file_is_written_slab_by_slab_and_equals_the_whole_volume_run(
        ct_model: Path, long_case: Path, tmp_path: Path, suffix: str) -> None:
    output = tmp_path / "out" / f"long{suffix}"
    output.parent.mkdir()
    item = run_in_row(CaseStages(_predictor(ct_model, streaming=True), None), Case("long", (long_case,), output))
    assert item.result is not None
    assert item.result.labels is None and item.result.labels_file == output, "never held whole"
    whole = _predictor(ct_model, streaming=False).predict(read_volume(long_case))
    written = sitk.ReadImage(str(output))
    assert np.array_equal(sitk.GetArrayFromImage(written), whole.labels)
    assert len(np.unique(whole.labels)) > 1
    source = sitk.ReadImage(str(long_case))
    assert written.GetSize() == source.GetSize() and written.GetOrigin() == source.GetOrigin()
    assert np.allclose(written.GetDirection(), source.GetDirection()) and np.allclose(written.GetSpacing(),
                                                                                      source.GetSpacing())
    assert [p.name for p in output.parent.iterdir()] == [output.name], "no staging left"


def test_rows_outside_nnunets_crop_are_written_as_background(ct_model: Path, long_case: Path, tmp_path: Path) -> None:
    image = sitk.ReadImage(str(long_case))
    voxels = sitk.GetArrayFromImage(image)
    voxels[:10] = 0  # empty slices above and below: nnU-Net crops them away
    voxels[-7:] = 0
    cropped = sitk.GetImageFromArray(voxels)
    cropped.CopyInformation(image)
    source = tmp_path / "edges_0000.nii.gz"
    sitk.WriteImage(cropped, str(source))
    output = tmp_path / "edges.nii.gz"
    predictor = _predictor(ct_model, streaming=True)
    item = run_in_row(CaseStages(predictor, None), Case("edges", (source,), output))
    assert item.result is not None and item.result.labels_file == output
    assert item.result.properties["bbox_used_for_cropping"][0] == [10, voxels.shape[0] - 7]
    whole = _predictor(ct_model, streaming=False).predict(read_volume(source))
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(output))), whole.labels)


def test_outputs_it_cannot_write_slab_by_slab_are_written_whole(ct_model: Path, long_case: Path,
                                                                tmp_path: Path) -> None:
    output = tmp_path / "long.mhd"  # a split header: the whole-volume writer's job
    item = run_in_row(CaseStages(_predictor(ct_model, streaming=True), None), Case("long", (long_case,), output))
    assert item.result is not None and item.result.labels is not None and item.result.labels_file is None
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(output))), item.result.labels)


def test_a_cancelled_run_leaves_no_label_file_and_no_staging(ct_model: Path, long_case: Path,
                                                            tmp_path: Path) -> None:
    output = tmp_path / "out" / "long.nii.gz"
    output.parent.mkdir()
    token = CancelToken()

    def on_event(event: TileEvent) -> None:
        if event.done == event.total - 1:  # the export thread has written the first slabs by now
            token.cancel()

    stages = CaseStages(_predictor(ct_model, streaming=True), None, on_event=on_event)
    with pytest.raises(Cancelled):
        run_in_row(stages, Case("long", (long_case,), output), token)
    assert list(output.parent.iterdir()) == []


def test_an_export_failure_leaves_no_label_file(ct_model: Path, long_case: Path, tmp_path: Path,
                                               monkeypatch) -> None:
    from tilewise.engine.postprocess import export as export_module

    output = tmp_path / "out" / "long.nrrd"
    output.parent.mkdir()
    calls = []
    original = export_module.LabelSink.write

    def fails_on_the_third_slab(self, slab) -> None:
        calls.append(slab.start)
        if len(calls) == 3:
            raise ValueError("the disk went away")
        original(self, slab)

    monkeypatch.setattr(export_module.LabelSink, "write", fails_on_the_third_slab)
    with pytest.raises(ValueError, match="the disk went away"):
        run_in_row(CaseStages(_predictor(ct_model, streaming=True), None), Case("long", (long_case,), output))
    assert list(output.parent.iterdir()) == []

"""A streaming case's label file written slab by slab as the export makes it (issue 27, part 4): the file is the
whole-volume run's labels with the input's geometry, the labels are never held whole, and a failed or cancelled run
leaves nothing under the output's name."""
from __future__ import annotations

import math
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


@pytest.fixture
def wide_case(tmp_path: Path) -> Path:
    """Two rows of tiles along z and three by three in-plane, upsampled to the input grid: the last row of tiles
    finishes its columns tile by tile."""
    return model_factory.make_case(tmp_path / "wide_0000.nii.gz", "3d", shape=(72, 120, 110), seed=3,
                                   spacing=(0.6, 0.6, 0.8))


def test_the_last_rows_are_written_window_by_window_as_their_tiles_finish(ct_model: Path, wide_case: Path,
                                                                         tmp_path: Path, monkeypatch) -> None:
    """The labels of the rows under the last row of tiles are made window by window as its tiles finish (issue 27:
    what is left after the last tile is its own part), held until each file row is whole, and the file is the
    whole-volume run's labels voxel for voxel."""
    from tilewise.engine.postprocess import export as export_module
    from tilewise.engine.postprocess import streaming as streaming_module

    calls: list[list[int]] = []  # per put_plane handled: voxels written per window slab
    write, take_plane = export_module.LabelSink.write, streaming_module.StreamingExport._take_plane

    def recording_write(self, slab) -> None:
        if calls and slab.window is not None:
            calls[-1].append((slab.stop - slab.start) * math.prod(s.stop - s.start for s in slab.window))
        write(self, slab)

    def recording_take_plane(self, pieces, final_columns) -> None:
        calls.append([])
        take_plane(self, pieces, final_columns)

    monkeypatch.setattr(export_module.LabelSink, "write", recording_write)
    monkeypatch.setattr(streaming_module.StreamingExport, "_take_plane", recording_take_plane)
    output = tmp_path / "out" / "wide.nii.gz"
    output.parent.mkdir()
    item = run_in_row(CaseStages(_predictor(ct_model, streaming=True), None), Case("wide", (wide_case,), output))
    assert item.result is not None and item.result.labels_file == output
    whole = _predictor(ct_model, streaming=False).predict(read_volume(wide_case))
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(output))), whole.labels)
    assert len(np.unique(whole.labels)) > 1

    assert len(calls) == 10, "the rows as the last row of tiles begins, then one update per tile (three by three)"
    windowed = [sum(call) for call in calls]
    assert windowed[0] == 0 and windowed[1] > 0, "the first tile's own columns go before the second tile has run"
    # the last tile covers 40 of the 72 network columns each way (31 % of the plane), plus the interpolation's halo
    assert 0 < windowed[-1] < 0.4 * sum(windowed), "after the last tile only its own part of the rows is left"


def test_with_probabilities_the_last_rows_go_whole_and_equal_the_whole_volume_values(ct_model: Path,
                                                                                    wide_case: Path) -> None:
    volume = read_volume(wide_case)
    streamed = _predictor(ct_model, streaming=True).predict(volume, with_probabilities=True)
    whole = _predictor(ct_model, streaming=False).predict(volume, with_probabilities=True)
    assert np.array_equal(streamed.labels, whole.labels)
    assert np.array_equal(np.asarray(streamed.probabilities), np.asarray(whole.probabilities)), "bit for bit"

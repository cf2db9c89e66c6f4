"""The labels-only export (``postprocess/agreement.py``) gives nnU-Net's labels voxel for voxel while resampling every
head only near boundaries: an output voxel whose network neighbours share one clear winner takes that winner."""
from __future__ import annotations

from pathlib import Path

import model_factory
from export_helpers import nnunet_labels, off_grid_case
import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from tilewise.engine import read_volume
from tilewise.engine.model.bundle import ModelBundle
from tilewise.engine.postprocess import agreement as agreement_module
from tilewise.engine.postprocess.agreement import AgreementLabels
from tilewise.engine.postprocess.export import LabelSink, export_logits
from tilewise.engine.postprocess.resample import LogitResampler
from tilewise.engine.preprocess.pipeline import preprocess


def _organ_like_logits(heads: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Smooth logits (heads, *shape) at the scale of a trained network's, so that labels form regions with
    boundaries; heads 0 and 1 within a few float32 steps of each other in one corner of the grid (where float
    rounding decides)."""
    rng = np.random.default_rng(seed)
    fields = np.stack([gaussian_filter(rng.normal(size=shape), sigma=3.0) for _ in range(heads)])
    fields = (fields / fields.std() * 20).astype(np.float32)
    corner = tuple(slice(0, max(2, s // 3)) for s in shape)
    tied = fields[(1, *corner)]
    fields[(0, *corner)] = tied + rng.normal(size=tied.shape).astype(np.float32) * 1e-5  # a few float32 steps apart
    return fields


def _nnunet_rule(values: np.ndarray, bundle: ModelBundle) -> np.ndarray:
    """nnunetv2's labels when its export writes no probabilities."""
    return np.asarray(bundle.label_manager.convert_logits_to_segmentation(values))


@pytest.mark.parametrize("kind", ["3d", "aniso", "transposed"])
def test_export_through_agreement_gives_nnunets_labels(make_model, tmp_path: Path, kind: str, monkeypatch) -> None:
    bundle = ModelBundle.load(make_model(kind))
    prepared = off_grid_case(bundle, kind, tmp_path)
    heads = bundle.label_manager.num_segmentation_heads
    grid = tuple(prepared.data[(0, *prepared.unpadded)].shape)
    logits = torch.from_numpy(_organ_like_logits(heads, grid, seed=3))
    expected = nnunet_labels(logits, bundle, prepared.properties)
    monkeypatch.setattr(agreement_module, "MANY_HEADS", 2)  # these test models have 3 heads
    used: list[AgreementLabels] = []
    real = LabelSink.agreement
    monkeypatch.setattr(LabelSink, "agreement", lambda sink, resampler: used.append(real(sink, resampler)) or used[-1])

    ours = export_logits(logits, bundle, prepared.properties, slab_budget_bytes=1).labels  # one row per slab

    assert np.array_equal(ours, expected), f"{int((ours != expected).sum())} of {ours.size} voxels differ"
    assert len(used) == 1 and used[0] is not None, "a labels-only export of an argmax model takes the shortcut"
    decided, boundary = used[0].decided_voxels, used[0].boundary_voxels
    assert decided > boundary > 0, (decided, boundary)  # most voxels decided by agreement, the rest resampled


def test_only_labels_of_many_heads_take_the_shortcut(make_model, tmp_path: Path, monkeypatch) -> None:
    bundle = ModelBundle.load(make_model("3d"))
    volume = read_volume(model_factory.case_files(tmp_path, "case", "3d", shape=(24, 28, 30)))
    prepared = preprocess(volume, bundle, with_nonzero_mask=False)
    resampler = LogitResampler((4, 5, 6), (8, 10, 12), (2.0, 2.0, 2.0), (1.0, 1.0, 1.0))
    assert LabelSink(bundle, prepared.properties, False).agreement(resampler) is None  # 3 heads: resampled whole
    monkeypatch.setattr(agreement_module, "MANY_HEADS", 3)
    assert LabelSink(bundle, prepared.properties, False).agreement(resampler) is not None
    assert LabelSink(bundle, prepared.properties, True).agreement(resampler) is None
    assert LabelSink(bundle, prepared.properties, False, with_uncertainty=True).agreement(resampler) is None
    regions = ModelBundle.load(make_model("regions"))
    assert LabelSink(regions, prepare_properties(regions, tmp_path), False).agreement(resampler) is None


def prepare_properties(bundle: ModelBundle, tmp_path: Path) -> dict:
    volume = read_volume(model_factory.case_files(tmp_path, "regions_case", "regions", shape=(24, 28, 30)))
    return preprocess(volume, bundle, with_nonzero_mask=False).properties


def _labels_in_slabs(resampler: LogitResampler, bundle: ModelBundle, rows: torch.Tensor,
                     rows_per_slab: int) -> np.ndarray:
    """Labels of the whole output grid from :class:`AgreementLabels`, slab after slab as the export asks for them."""
    agreement = AgreementLabels(resampler, bundle)
    parts = []
    for start, stop in resampler.slabs(rows_per_slab):
        low, high = resampler.input_rows(start, stop)
        parts.append(agreement.labels(rows[:, low:high], start, stop, low).numpy())
    assert agreement.decided_voxels > agreement.boundary_voxels > 0
    return np.concatenate(parts)


def _nnunet_resampled(logits: np.ndarray, out_shape, spacing, new_spacing, order_z: int) -> np.ndarray:
    from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape

    return resample_data_or_seg_to_shape(logits, out_shape, spacing, new_spacing, is_seg=False, order=1,
                                         order_z=order_z, force_separate_z=None)


@pytest.mark.parametrize(("in_shape", "out_shape", "spacing", "new_spacing", "order_z"), [
    pytest.param((20, 24, 28), (31, 17, 40), (1.0, 1.0, 1.0), (0.7, 1.5, 0.8), 0, id="joint-linear"),
    pytest.param((8, 30, 30), (29, 41, 37), (4.0, 1.0, 1.0), (1.1, 0.8, 0.8), 0, id="separate-z-nearest"),
    pytest.param((8, 30, 30), (29, 41, 37), (4.0, 1.0, 1.0), (1.1, 0.8, 0.8), 1, id="separate-z-linear"),
    pytest.param((30, 20, 9), (11, 31, 30), (1.0, 1.0, 4.0), (2.7, 0.6, 1.2), 1, id="coarse-last-axis"),
    pytest.param((12, 30, 30), (12, 41, 37), (1.0, 1.0, 1.0), (1.0, 0.73, 0.81), 0, id="rows-not-resampled"),
])
def test_slabs_in_order_equal_nnunets_rule(make_model, in_shape, out_shape, spacing, new_spacing, order_z) -> None:
    bundle = ModelBundle.load(make_model("3d"))
    logits = _organ_like_logits(bundle.label_manager.num_segmentation_heads, in_shape, seed=5)
    expected = _nnunet_rule(_nnunet_resampled(logits, out_shape, spacing, new_spacing, order_z), bundle)
    resampler = LogitResampler(in_shape, out_shape, spacing, new_spacing, order=1, order_z=order_z)
    for rows_per_slab in (1, 4, out_shape[0]):
        ours = _labels_in_slabs(resampler, bundle, torch.from_numpy(logits), rows_per_slab)
        assert np.array_equal(ours, expected), f"{int((ours != expected).sum())} of {ours.size} voxels differ"


def test_near_ties_at_boundaries_need_nnunets_own_values(make_model, monkeypatch) -> None:
    """Without nnU-Net's own values at near ties the float32 interpolation alone gives other labels (so the tests
    above can fail)."""
    bundle = ModelBundle.load(make_model("3d"))
    shape, out_shape, spacing, new_spacing = (20, 24, 28), (31, 17, 40), (1.0, 1.0, 1.0), (0.7, 1.5, 0.8)
    logits = _organ_like_logits(bundle.label_manager.num_segmentation_heads, shape, seed=5)
    expected = _nnunet_rule(_nnunet_resampled(logits, out_shape, spacing, new_spacing, 0), bundle)
    resampler = LogitResampler(shape, out_shape, spacing, new_spacing, order=1, order_z=0)
    monkeypatch.setattr(agreement_module, "settle_ties", lambda *args, **kwargs: 0)
    assert not np.array_equal(_labels_in_slabs(resampler, bundle, torch.from_numpy(logits), out_shape[0]), expected)


def test_a_slab_mostly_at_boundaries_is_left_to_the_full_export(make_model, monkeypatch) -> None:
    """Labels that change at nearly every network voxel (a random-weight network's) are cheaper to resample whole;
    after such a slab the next ones are declined without looking, for one slab, then two, then four."""
    bundle = ModelBundle.load(make_model("3d"))
    heads = bundle.label_manager.num_segmentation_heads
    noise = torch.from_numpy(np.random.default_rng(2).normal(size=(heads, 10, 12, 14)).astype(np.float32) * 20)
    resampler = LogitResampler((10, 12, 14), (20, 25, 29), (1.0, 1.0, 1.0), (0.5, 0.48, 0.48))
    agreement = AgreementLabels(resampler, bundle)
    low, high = resampler.input_rows(0, 4)
    assert agreement.labels(noise[:, low:high], 0, 4, low) is None
    assert agreement.declined_rows == 4 and agreement.decided_voxels == agreement.boundary_voxels == 0

    looked_at: set[int] = set()
    slab = [0]
    plane = agreement._plane

    def looking(*args):
        looked_at.add(slab[0])
        return plane(*args)

    monkeypatch.setattr(agreement, "_plane", looking)
    for start in range(4, 20, 2):  # paused for 4 rows, looks at 8, paused for 2 x 2, looks at 14, paused for 4 x 2
        slab[0] = start
        low, high = resampler.input_rows(start, start + 2)
        assert agreement.labels(noise[:, low:high], start, start + 2, low) is None
    assert looked_at == {8, 14} and agreement.declined_rows == 20


def test_a_streamed_run_through_the_shortcut_equals_the_whole_volume_export(make_model, tmp_path: Path,
                                                                           monkeypatch) -> None:
    """The streaming export (slabs on a thread beside the tiles) takes the shortcut too, with the same labels as a
    whole-volume run that resamples every head."""
    from tilewise.engine import Predictor, get_preset

    preset = get_preset("reference").with_overrides(mirroring=False, backend="torch")
    model = make_model("3d")
    volume = read_volume(model_factory.case_files(tmp_path, "case", "3d"))
    whole = Predictor(model, preset, device="cpu", streaming=False).predict(volume).labels  # 3 heads: no shortcut
    monkeypatch.setattr(agreement_module, "MANY_HEADS", 2)
    used: list[AgreementLabels] = []
    real = LabelSink.agreement
    monkeypatch.setattr(LabelSink, "agreement", lambda sink, resampler: used.append(real(sink, resampler)) or used[-1])
    streamed = Predictor(model, preset, device="cpu", streaming=True).predict(volume).labels

    assert int((streamed != whole).sum()) == 0 and len(np.unique(whole)) > 1
    assert len(used) == 1 and used[0] is not None and used[0].decided_voxels > 0


def test_winners_kept_for_the_next_slab_are_checked_again_when_its_logits_are_much_larger(make_model) -> None:
    """A lead checked against one slab's largest logit may be within the rounding of a next slab with far larger
    logits: the row's winners are then found again against the larger one."""
    bundle = ModelBundle.load(make_model("3d"))
    logits = torch.from_numpy(_organ_like_logits(bundle.label_manager.num_segmentation_heads, (10, 12, 14), seed=1))
    logits[:, 6:] *= 50  # rows 6 on: logits 50 times larger
    resampler = LogitResampler((10, 12, 14), (20, 25, 29), (1.0, 1.0, 1.0), (0.5, 0.48, 0.48))
    agreement = AgreementLabels(resampler, bundle)
    magnitudes = []
    for start, stop in resampler.slabs(4):
        low, high = resampler.input_rows(start, stop)
        agreement.labels(logits[:, low:high], start, stop, low)
        magnitudes.append(float(logits[:, low:high].abs().max()))
        assert all(checked * 4 >= magnitudes[-1] for _, checked in agreement._kept.values())
    assert max(magnitudes) > 4 * min(magnitudes)  # the case the rule is for occurred

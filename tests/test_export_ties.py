"""The export's labels are nnU-Net's where float32 rounding decides them: the export resamples logits in float32,
nnU-Net in float64 (rounded once to float32) before its softmax or sigmoid; voxels near a tie get nnU-Net's values
and rule (``postprocess/ties.py``). Without that, a few voxels per million differ, and a cascade's full-res network
spreads each flipped low-res voxel further (tests/test_cascade_prev_stage.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from export_helpers import nnunet_labels, off_grid_case
from tilewise.engine.model.bundle import ModelBundle
from tilewise.engine.postprocess import export as export_module
from tilewise.engine.postprocess.export import export_logits
from tilewise.engine.postprocess.resample import LogitResampler


@pytest.mark.parametrize("kind", ["3d", "aniso", "regions", "transposed"])
def test_export_labels_are_nnunets_voxel_for_voxel(make_model, tmp_path: Path, kind: str, monkeypatch) -> None:
    bundle = ModelBundle.load(make_model(kind))
    prepared = off_grid_case(bundle, kind, tmp_path)
    heads = bundle.label_manager.num_segmentation_heads
    noise = np.random.default_rng(7).normal(size=(heads, *prepared.data.shape[1:])).astype(np.float32)
    if bundle.label_manager.has_regions:  # every region's logit close to 0
        noise *= 1e-6
    else:  # heads 0 and 1 nearly tied everywhere, at the scale of real logits
        noise *= 30
        noise[1] = noise[0] + noise[1] * 1e-5
    logits = torch.from_numpy(noise)[(slice(None), *prepared.unpadded)]
    expected = nnunet_labels(logits, bundle, prepared.properties)

    ours = export_logits(logits, bundle, prepared.properties, slab_budget_bytes=1).labels  # one row per slab
    assert np.array_equal(ours, expected), f"{int((ours != expected).sum())} of {ours.size} voxels differ"

    monkeypatch.setattr(export_module, "settle_ties", lambda *args, **kwargs: 0)  # the test can fail: float32 alone differs
    assert not np.array_equal(export_logits(logits, bundle, prepared.properties).labels, expected)


@pytest.mark.parametrize(("in_shape", "out_shape", "spacing", "new_spacing", "order_z"), [
    pytest.param((20, 24, 28), (31, 17, 40), (1.0, 1.0, 1.0), (0.7, 1.5, 0.8), 0, id="joint-linear"),
    pytest.param((40, 48, 56), (60, 72, 84), (1.0, 1.0, 1.0), (2 / 3, 2 / 3, 2 / 3), 0, id="dyadic-weights"),
    pytest.param((8, 30, 30), (29, 41, 37), (4.0, 1.0, 1.0), (1.1, 0.8, 0.8), 0, id="separate-z-nearest"),
    pytest.param((8, 30, 30), (29, 41, 37), (4.0, 1.0, 1.0), (1.1, 0.8, 0.8), 1, id="separate-z-linear"),
    pytest.param((30, 20, 9), (11, 31, 30), (1.0, 1.0, 4.0), (2.7, 0.6, 1.2), 1, id="coarse-last-axis"),
])
def test_points_are_nnunets_values_and_the_slab_is_within_its_bound(in_shape, out_shape, spacing, new_spacing,
                                                                     order_z) -> None:
    from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape

    logits = np.random.default_rng(4).normal(size=(3, *in_shape)).astype(np.float32) * 50
    expected = torch.from_numpy(resample_data_or_seg_to_shape(logits, out_shape, spacing, new_spacing, is_seg=False,
                                                              order=1, order_z=order_z, force_separate_z=None))
    resampler = LogitResampler(in_shape, out_shape, spacing, new_spacing, order=1, order_z=order_z)
    rows = torch.from_numpy(logits)
    index = torch.stack(torch.meshgrid(*[torch.arange(s) for s in out_shape], indexing="ij"), -1).reshape(-1, 3)
    start = next(row for row in range(out_shape[0]) if resampler.input_rows(row, row + 1)[0] >= 2)
    chosen = index[index[:, 0] >= start]  # output rows that read input rows 2, 3, ... only
    points = resampler.points(rows[:, 2:], 2, chosen)
    assert torch.equal(points, expected[:, chosen[:, 0], chosen[:, 1], chosen[:, 2]])
    error = (resampler.slab(rows, 0, out_shape[0], 0) - expected).abs().max().item()
    assert 0 < error <= resampler.error_bound(float(np.abs(logits).max()))


def _smooth_heads(prepared, seed: int) -> np.ndarray:
    """Three smooth float32 logit fields on the case's unpadded network grid, at the scale of real logits."""
    from scipy.ndimage import gaussian_filter

    grid = tuple(prepared.data[(0, *prepared.unpadded)].shape)
    rng = np.random.default_rng(seed)
    fields = np.stack([gaussian_filter(rng.normal(size=grid), sigma=3.0) for _ in range(3)])
    return (fields / fields.std() * 20).astype(np.float32)


def test_a_labels_only_export_breaks_softmax_ties_as_nnunet_does(make_model, tmp_path: Path, monkeypatch) -> None:
    """Without probabilities nnunetv2 takes the argmax of the logits themselves; two logits a float32 step apart can
    have equal softmax probabilities, so the softmax rule would pick the first head where nnU-Net picks the larger."""
    from tilewise.engine.postprocess import ties

    bundle = ModelBundle.load(make_model("3d"))
    prepared = off_grid_case(bundle, "3d", tmp_path)
    fields = _smooth_heads(prepared, seed=3)
    fields[0] = fields[1] * np.float32(1 + 1e-7)  # heads 0 and 1 equal or one float32 step apart everywhere
    logits = torch.from_numpy(fields)
    expected = nnunet_labels(logits, bundle, prepared.properties)

    ours = export_logits(logits, bundle, prepared.properties).labels
    assert np.array_equal(ours, expected), f"{int((ours != expected).sum())} of {ours.size} voxels differ"

    monkeypatch.setattr(ties, "argmax_of_logits", lambda bundle, through_probabilities: False)  # the softmax rule
    assert not np.array_equal(export_logits(logits, bundle, prepared.properties).labels, expected)


def test_near_ties_settled_from_the_close_heads_alone_match_nnunets_rule_on_every_head(make_model) -> None:
    """A labels-only export computes nnU-Net's values of the close heads only; its labels must be what nnU-Net's
    argmax over all heads gives, exact equals going to the lowest head (three-way ties, ties at the first and
    last head, and heads just outside the margin included)."""
    from tilewise.engine.postprocess import ties

    bundle = ModelBundle.load(make_model("3d"))
    heads, voxels, error = 40, 3000, 1e-3
    rng = np.random.default_rng(5)
    values = torch.from_numpy(rng.normal(scale=3.0, size=(heads, voxels)).astype(np.float32))
    top = values.amax(0)
    for voxel in range(0, voxels, 3):  # two to four heads within the margin, some exactly equal
        chosen = rng.choice(heads, size=rng.integers(2, 5), replace=False)
        chosen[0] = [0, heads - 1, chosen[0]][voxel % 3]
        values[chosen, voxel] = top[voxel] + 1 + torch.from_numpy(rng.integers(-1, 2, len(chosen)) * error / 4
                                                                 ).float()
    exact_values = values + torch.from_numpy(rng.uniform(-error, error, values.shape).astype(np.float32))
    exact_values[:, ::7] = exact_values[:, ::7].round()  # exact equals among the close heads
    asked: list[int] = []

    def exact(index: torch.Tensor, heads_asked: torch.Tensor | None) -> torch.Tensor:
        assert heads_asked is not None, "a labels-only export asks for the close heads only"
        asked.append(len(heads_asked))
        return exact_values[heads_asked, index[:, 0]]

    labels = values.argmax(0).to(torch.uint8)
    before = values.clone()
    looked = ties.settle_ties(labels, values, bundle, error, exact, through_probabilities=False)
    assert torch.equal(values, before), "the values are left as they were"
    expected = exact_values.numpy().argmax(0)
    near = ties.near_ties(values, bundle, error).numpy()
    assert looked == int(near.sum()) > voxels // 4
    assert np.array_equal(labels.numpy()[near], expected[near])
    assert sum(asked) < 5 * looked, "only the close heads were computed"


def test_a_rule_only_nnunet_computes_settles_its_ties_from_its_own_values(make_model, tmp_path: Path,
                                                                         monkeypatch) -> None:
    """Where nnunetv2's own function resamples the whole grid (another resampler, cubic orders), its values are
    nnU-Net's already; near ties are looked up in them, per head or all heads, and the labels are nnU-Net's."""
    bundle = ModelBundle.load(make_model("3d"))
    prepared = off_grid_case(bundle, "3d", tmp_path)
    fields = _smooth_heads(prepared, seed=4)
    fields[0] = fields[1]  # heads 0 and 1 exactly tied everywhere: the lower head wins
    logits = torch.from_numpy(fields)
    monkeypatch.setattr(export_module, "slab_wise", lambda bundle: False)
    ours = export_logits(logits, bundle, prepared.properties).labels
    expected = nnunet_labels(logits, bundle, prepared.properties)
    assert np.array_equal(ours, expected), f"{int((ours != expected).sum())} of {ours.size} voxels differ"
    assert (expected == 0).any() and not (expected == 1).any()

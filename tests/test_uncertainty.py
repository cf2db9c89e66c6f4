"""The per-voxel uncertainty map (``with_uncertainty``, ``--save_uncertainty``): nnU-Net's probabilities' top-two
margin (a region's distance from 0.5 for region-based models), the same labels, the same map streamed, its regions to
check, the file beside the labels, the batch summary's uncertain volume, and the refusals."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import model_factory
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from tilewise.engine import (
    Geometry,
    Predictor,
    Volume,
    get_preset,
    read_volume,
    uncertain_regions,
    uncertain_volume_ml,
)
from tilewise.engine.errors import TilewiseError
from tilewise.engine.postprocess import uncertainty as uncertainty_module
from tilewise.engine.postprocess.export import crop_resampler, export_slab_rows
from tilewise.engine.postprocess.uncertainty import probabilities_uncertainty, slab_uncertainty
from tilewise.engine.runtime.memory_plan import JobSize, plan_memory

SMALL = (24, 28, 32)
FAST = ("--preset", "preview", "-device", "cpu", "--backend", "torch")  # no OpenVINO conversion: quick to start
PAD = 5
"""Zero columns on each side of x: outside nnU-Net's nonzero crop."""


def _predictor(model: Path, **kwargs) -> Predictor:
    return Predictor(model, get_preset("fast").with_overrides(backend="torch"), device="cpu", **kwargs)


def _padded_volume(tmp_path: Path, kind: str) -> Volume:
    """A case with zero columns at both x ends (which nnU-Net crops away) and the kind's other values shifted off 0."""
    volume = read_volume(model_factory.case_files(tmp_path, "case", kind, shape=SMALL, seed=3))
    array = volume.array - volume.array.min() + 1.0  # no zero inside: the crop is the padding only
    padded = np.pad(array, ((0, 0), (0, 0), (0, 0), (PAD, PAD)))
    size = (volume.geometry.size[0] + 2 * PAD, *volume.geometry.size[1:])
    return Volume(padded.astype(np.float32), Geometry(size, volume.geometry.spacing, volume.geometry.origin,
                                                      volume.geometry.direction))


def _expected_map(probabilities: np.ndarray, regions: bool) -> np.ndarray:
    """The definition, in numpy float64, from the probabilities on the input grid (classes, z, y, x)."""
    p = np.asarray(probabilities, dtype=np.float64)
    if regions:
        confidence = np.abs(2 * p - 1).min(axis=0)
    else:
        top = np.sort(p, axis=0)
        confidence = top[-1] - top[-2]
    return np.rint(100 * (1 - confidence))


@pytest.mark.parametrize("kind", ["3d", "transposed", "regions"])
@pytest.mark.parametrize("nnunet_exact", [False, True], ids=["tilewise", "nnunet-exact"])
def test_the_map_is_the_definition_on_the_probabilities_and_the_labels_do_not_change(
        make_model, tmp_path: Path, kind: str, nnunet_exact: bool) -> None:
    predictor = _predictor(make_model(kind), nnunet_exact=nnunet_exact)
    volume = _padded_volume(tmp_path, kind)

    plain = predictor.predict(volume)
    both = predictor.predict(volume, with_probabilities=True, with_uncertainty=True)
    alone = predictor.predict(volume, with_uncertainty=True)

    assert plain.uncertainty is None
    assert both.uncertainty is not None and alone.uncertainty is not None
    assert both.uncertainty.dtype == np.uint8 and both.uncertainty.shape == both.labels.shape
    assert np.array_equal(plain.labels, both.labels) and np.array_equal(plain.labels, alone.labels)
    assert np.array_equal(both.uncertainty, alone.uncertainty)
    expected = _expected_map(both.probabilities, kind == "regions")
    assert int(np.abs(expected - both.uncertainty).max()) <= 1, "at most one unit of rounding"
    assert int(both.uncertainty.max()) <= 100
    assert not both.uncertainty[..., :PAD].any() and not both.uncertainty[..., -PAD:].any(), "outside the crop: 0"
    inside = both.uncertainty[..., PAD:-PAD]
    assert inside.max() >= 50 and (inside == 0).any(), "the test case has certain and uncertain voxels"


@pytest.mark.parametrize("heads", [2, 4, 40, 105])
@pytest.mark.parametrize("regions", [False, True])
def test_the_map_from_logits_is_the_map_of_their_probabilities_on_cpu_and_gpu_paths(heads: int, regions: bool) -> None:
    generator = torch.Generator().manual_seed(heads)
    logits = 4 * torch.randn(3, 37, 41, heads, generator=generator)  # voxels across several chunks for 105 heads
    logits[0, 0, :5, :2] = 40.0  # exact ties between the two largest
    logits[0, 1, :5, 1] = logits[0, 1, :5, 0] = logits[0, 1, :5].amax(-1) + 1
    logits[0, 2, :5, 0] = 0.0  # a region at exactly 0.5
    if regions:  # every region far from 0.5: certain
        logits[2] = 12 * torch.sign(logits[2])
    else:  # one class far ahead: certain
        logits[2, ..., 0] += 30
    values = logits.permute(3, 0, 1, 2)  # heads first, stored innermost: as the export's slabs
    probabilities = torch.sigmoid(values) if regions else torch.softmax(values, 0)

    from_logits = slab_uncertainty(values, regions)

    expected = torch.as_tensor(_expected_map(probabilities.numpy(), regions))
    assert from_logits.dtype == torch.uint8 and from_logits.shape == values.shape[1:]
    assert int((from_logits.double() - expected).abs().max()) <= 1
    from_probabilities = probabilities_uncertainty(probabilities, regions)
    assert int((from_logits.int() - from_probabilities.int()).abs().max()) <= 1
    whole_slab = uncertainty_module._percent(uncertainty_module._confidence(values, regions))  # a GPU's kernels
    assert int((from_logits.int() - whole_slab.int()).abs().max()) <= 1
    if regions:
        assert (from_logits[0, 2, :5] == 100).all(), "a region at 0.5 is 100"
    else:
        assert (from_logits[0, :2, :5] == 100).all(), "a tie between the two most likely classes is 100"
    assert (from_logits[2] == 0).all() and (from_logits[:2] >= 50).any()


@pytest.mark.parametrize("kind", ["3d", "regions"])
def test_streaming_gives_the_whole_volume_map(make_model, tmp_path: Path, kind: str) -> None:
    model = make_model(kind)
    volume = read_volume(model_factory.case_files(tmp_path, "case", kind, shape=SMALL, seed=5))
    streaming = _predictor(model, streaming=True)
    assert streaming.plan_case(volume, with_probabilities=False, with_uncertainty=True).plan.streaming

    whole = _predictor(model, streaming=False).predict(volume, with_uncertainty=True)
    streamed = streaming.predict(volume, with_uncertainty=True)

    assert np.array_equal(streamed.labels, whole.labels)
    assert np.array_equal(streamed.uncertainty, whole.uncertainty)
    assert whole.uncertainty.max() > 0


def test_a_streaming_case_planned_without_the_map_says_so(ct_model: Path, tmp_path: Path) -> None:
    predictor = _predictor(ct_model, streaming=True)
    case = predictor.prepare(read_volume(model_factory.make_case(tmp_path / "s_0000.nii.gz", shape=SMALL)),
                             with_probabilities=False)
    predictor.run_tiles(case)
    with pytest.raises(TilewiseError, match="with_uncertainty=True"):
        predictor.finish(case, with_uncertainty=True)


def test_the_memory_plan_counts_the_map_and_the_slab_makes_room_for_its_work(ct_model: Path, tmp_path: Path) -> None:
    job = JobSize(input_voxels=100_000_000, channels=1, network_voxels=1_000_000, heads=3, label_bytes=1,
                  activation_bytes=0)
    cpu = torch.device("cpu")
    plans = [plan_memory(replace(job, uncertainty=flag), cpu, [(cpu, torch.float32)], 10**12, 0)
             for flag in (False, True)]
    assert plans[1].peak_host_bytes - plans[0].peak_host_bytes == 4 * job.input_voxels  # export dominates here

    predictor = _predictor(ct_model)
    case = predictor.prepare(read_volume(model_factory.make_case(tmp_path / "r_0000.nii.gz", shape=SMALL)))
    resampler = crop_resampler(predictor.bundle, case.prepared.properties, (40, 200, 200))
    heads = predictor.bundle.label_manager.num_segmentation_heads
    without, with_map = (export_slab_rows(resampler, heads, 2**19, flag) for flag in (False, True))
    assert 1 <= with_map < without


def test_regions_largest_first_with_centres_inside_and_volumes_from_the_spacing() -> None:
    uncertainty = np.zeros((20, 30, 40), np.uint8)
    uncertainty[2:6, 2:12, 2:12] = 80  # 400 voxels
    uncertainty[10:18, 20:28, 30:31] = 60  # 64 voxels
    uncertainty[10, 2:12, 30] = 90  # a C shape: its centroid lies outside it ...
    uncertainty[10:16, 2, 30] = 90
    uncertainty[10:16, 11, 30] = 90  # ... 10 + 5 + 5 = 20 voxels
    uncertainty[18, 0, 0] = 70
    uncertainty[19, 1, 1] = 70  # diagonal neighbours: one region of 2 voxels (26-connectivity)
    uncertainty[0, 29, 39] = 49  # below the threshold
    labels = np.zeros_like(uncertainty)
    labels[2:6, 2:12, 2:7] = 3
    labels[2:4, 2:12, 7:12] = 1
    geometry = Geometry((40, 30, 20), (0.5, 2.0, 1.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    voxel_ml = 0.5 * 2.0 * 1.5 / 1000

    regions = uncertain_regions(uncertainty, geometry, labels, min_volume_ml=0.0, min_thickness=1)

    assert [r.voxels for r in regions] == [400, 64, 20, 2]
    assert [r.volume_ml for r in regions] == pytest.approx([n * voxel_ml for n in (400, 64, 20, 2)])
    for region in regions:
        assert uncertainty[region.centre] >= 50, f"{region.centre} lies outside its region"
        assert all(s.start <= c < s.stop for c, s in zip(region.centre, region.bbox))
    assert regions[0].bbox == (slice(2, 6), slice(2, 12), slice(2, 12))
    assert regions[0].labels == (3, 0, 1)  # 200, 100 and 100 voxels: most frequent first, ties by value
    assert regions[0].mean_uncertainty == pytest.approx(80.0)
    assert regions[2].mean_uncertainty == pytest.approx(90.0)
    thin_kept = {"min_thickness": 1}
    assert [r.voxels for r in uncertain_regions(uncertainty, geometry, min_volume_ml=3 * voxel_ml, **thin_kept)] == [400, 64, 20]
    assert [r.voxels for r in uncertain_regions(uncertainty, geometry, limit=2, **thin_kept)] == [400, 64]
    assert uncertain_regions(uncertainty, geometry, threshold=95, **thin_kept) == []
    assert uncertain_regions(uncertainty, geometry, **thin_kept)[0].labels == ()
    assert uncertain_volume_ml(uncertainty, geometry) == pytest.approx(486 * voxel_ml)
    assert uncertain_volume_ml(uncertainty, geometry, threshold=49) == pytest.approx(487 * voxel_ml)


def test_regions_leave_out_thin_seams_along_boundaries_but_keep_blobs() -> None:
    """A seam one or two voxels thick (the boundary between two structures) touching a blob: by default only the
    blob is a region to check (the seam would join everything along the boundary into one region); the uncertain
    volume still counts the seam."""
    uncertainty = np.zeros((30, 40, 40), np.uint8)
    uncertainty[:, 20, :] = 70  # a one-voxel seam across the whole image
    uncertainty[:, 10:12, :] = 60  # a two-voxel one
    blob = (slice(5, 11), slice(21, 27), slice(5, 11))
    uncertainty[blob] = 90  # 6 x 6 x 6, touching the first seam
    geometry = Geometry((40, 40, 30), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))

    everything = uncertain_regions(uncertainty, geometry, min_volume_ml=0.0, min_thickness=1)
    assert [r.voxels for r in everything] == [30 * 40 * 2, 30 * 40 + 6 * 6 * 6]  # the first seam holds the blob

    (region,) = uncertain_regions(uncertainty, geometry, min_volume_ml=0.0)
    assert all(s.start >= b.start - 1 and s.stop <= b.stop + 1 for s, b in zip(region.bbox, blob))
    assert 4 * 4 * 4 < region.voxels <= 6 * 6 * 6 and uncertainty[region.centre] == 90
    assert uncertain_volume_ml(uncertainty, geometry) == pytest.approx((30 * 40 * 3 + 6 * 6 * 6) / 1000)


def test_predict_writes_the_map_with_the_inputs_geometry(ct_model: Path, tmp_path: Path, run_cli) -> None:
    source = model_factory.make_case(tmp_path / "in" / "obl_0000.nrrd", "3d", shape=SMALL, seed=7,
                                     direction=(0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0),
                                     origin=(10.0, -20.0, 5.0), spacing=(1.2, 0.9, 1.5))
    out = tmp_path / "out"
    code, _, err = run_cli(["predict", "-i", source, "-o", out, "-m", ct_model, *FAST, "--save_uncertainty",
                            "--report", out / "report.json"])

    assert code == 0, err
    written, image = sitk.ReadImage(str(out / "obl_uncertainty.nrrd")), sitk.ReadImage(str(source))
    assert written.GetPixelID() == sitk.sitkUInt8
    assert written.GetSize() == image.GetSize()
    assert np.allclose(written.GetSpacing(), image.GetSpacing()) and np.allclose(written.GetOrigin(), image.GetOrigin())
    assert np.allclose(written.GetDirection(), image.GetDirection())
    array = sitk.GetArrayFromImage(written)
    assert array.max() <= 100 and array.max() >= 50
    expected = Predictor(ct_model, get_preset("preview").with_overrides(backend="torch"), device="cpu").predict(
        read_volume(source), with_uncertainty=True)
    assert np.array_equal(array, expected.uncertainty)
    volume = uncertain_volume_ml(expected.uncertainty, expected.geometry)
    assert f"tilewise: obl: uncertain volume {volume:.2f} mL (uncertainty 50 or more)" in err
    report = json.loads((out / "report.json").read_text())["cases"][0]
    assert report["uncertain_volume_ml"] == pytest.approx(volume, abs=1e-3)

    (out / "obl_uncertainty.nrrd").unlink()  # --continue_prediction redoes a case whose map is missing
    code, _, err = run_cli(["predict", "-i", source, "-o", out, "-m", ct_model, *FAST, "--save_uncertainty",
                            "--continue_prediction"])
    assert code == 0, err
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "obl_uncertainty.nrrd"))), array)


def test_batch_summary_gives_each_cases_uncertain_volume_and_resume_redoes_a_damaged_map(
        ct_model: Path, tmp_path: Path, run_cli) -> None:
    folder, out = tmp_path / "in", tmp_path / "out"
    for n in range(2):
        model_factory.make_case(folder / f"v{n}_0000.nii.gz", "3d", shape=SMALL, seed=20 + n)
    argv = ["batch", "-i", folder, "-o", out, "-m", ct_model, *FAST, "--save_uncertainty"]
    assert run_cli(argv)[0] == 0
    summary = json.loads((out / "batch_summary.json").read_text())
    assert summary["uncertainty_threshold"] == 50
    records = {r["case"]: r for r in summary["cases"]}
    for n in range(2):
        path = out / f"v{n}_uncertainty.nii.gz"
        written = sitk.ReadImage(str(path))
        geometry = Geometry(written.GetSize(), written.GetSpacing(), written.GetOrigin(), written.GetDirection())
        assert records[f"v{n}"]["uncertain_volume_ml"] == pytest.approx(
            uncertain_volume_ml(sitk.GetArrayFromImage(written), geometry), abs=1e-3)
        assert records[f"v{n}"]["files"][path.name]["size"] == path.stat().st_size
    whole = (out / "v1_uncertainty.nii.gz").read_bytes()
    (out / "v1_uncertainty.nii.gz").write_bytes(whole[:-100])  # truncated, as a full disk once left it

    code, _, err = run_cli(argv)

    assert code == 0, err
    assert "tilewise: v1: redone, its earlier output cannot be kept (v1_uncertainty.nii.gz has " in err
    again = {r["case"]: r for r in json.loads((out / "batch_summary.json").read_text())["cases"]}
    assert (again["v0"]["status"], again["v1"]["status"]) == ("skipped", "done")
    assert (out / "v1_uncertainty.nii.gz").read_bytes() == whole
    assert again["v0"]["uncertain_volume_ml"] == records["v0"]["uncertain_volume_ml"], "a skipped case keeps it"
    assert again["v1"]["uncertain_volume_ml"] == records["v1"]["uncertain_volume_ml"]

    assert run_cli(["batch", "-i", folder, "-o", tmp_path / "plain", "-m", ct_model, *FAST])[0] == 0
    plain = json.loads((tmp_path / "plain" / "batch_summary.json").read_text())
    assert "uncertainty_threshold" not in plain and all("uncertain_volume_ml" not in r for r in plain["cases"])


@pytest.mark.parametrize(("extra", "words"), [
    (["-m", "totalseg:total"], "--save_uncertainty: is not available for TotalSegmentator tasks"),
    (["--ray", "auto"], "--save_uncertainty: is not available with --ray yet"),
], ids=["totalsegmentator-task", "ray"])
def test_refusals_are_one_line_before_any_work(ct_model: Path, tmp_path: Path, run_cli, extra: list,
                                               words: str) -> None:
    model_factory.make_case(tmp_path / "in" / "r_0000.nii.gz", "3d", shape=SMALL)
    command = "predict" if "--ray" not in extra else "batch"
    argv = [command, "-i", tmp_path / "in", "-o", tmp_path / "out", "-m", ct_model, *FAST, "--save_uncertainty",
            *extra]

    code, _, err = run_cli(argv)

    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("tilewise: error:")]
    assert len(errors) == 1 and errors[0].startswith(f"tilewise: error: {words}"), err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("r*")), "nothing was written"

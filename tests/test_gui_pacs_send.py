"""Send to PACS on a real Orthanc: a series opened from the PACS, segmented and edited, is stored as a binary DICOM
SEG that Orthanc then holds in the same study, referencing the source series, with the layer's voxels; the button is
off (its tooltip says why) without a result or for a result of no DICOM series."""
from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
from gui_pacs_fixtures import PULL_TIMEOUT_MS, SERVER, configure, dicomweb_server, orthanc  # noqa: F401
from tilewise.gui.panels.pacs_send import NO_RESULT, NOT_DICOM
from tilewise.resources import demo_model_dir

RUN_TIMEOUT_MS = 180_000


def test_send_to_pacs_stores_the_edited_result_as_a_seg_in_the_same_study(gui, qtbot, orthanc, dialogs) -> None:
    viewer, widget = gui
    server, folder = orthanc
    configure(widget, dicomweb_server(server))
    send = widget.send_panel.send_button
    assert not send.isEnabled() and send.toolTip() == NO_RESULT
    widget.model_panel.select(demo_model_dir())
    widget.settings_panel.select_preset("preview")
    browser = widget.open_from_pacs()
    qtbot.waitUntil(lambda: browser.studies.rowCount() == 2, timeout=30_000)
    browser.studies.selectRow(0)
    qtbot.waitUntil(lambda: browser.series.rowCount() == 1, timeout=30_000)
    browser.series.selectRow(0)
    with qtbot.waitSignal(widget.image_opened, timeout=PULL_TIMEOUT_MS):
        browser.open_button.click()
    with qtbot.waitSignal(widget.run_finished, timeout=RUN_TIMEOUT_MS) as finished:
        widget.run_panel.run_button.click()
    assert finished.args == ["done"]
    layer = widget.result_layer
    assert send.isEnabled() and [a.text() for a in send.menu().actions()][0] == f"Send to {SERVER}"
    layer.data[0, :4, :4] = 2  # an edit the radiologist made in review
    layer.refresh()
    expected = np.array(layer.data)

    with qtbot.waitSignal(widget.pacs_flow.sent, timeout=60_000) as sent:
        send.menu().actions()[0].trigger()
    assert sent.args == [f"Stored in {SERVER}, in the same study."]
    assert widget.send_panel.status.text().startswith("Stored in") and not dialogs["critical"]

    from dicomweb_client import DICOMwebClient

    client = DICOMwebClient(f"{server.http_url}/dicom-web", session=server.session())
    source = [pydicom.dcmread(p, stop_before_pixels=True) for p in folder.iterdir()]
    study = str(source[0].StudyInstanceUID)
    segs = client.search_for_series(study, search_filters={"Modality": "SEG"})
    assert len(segs) == 1  # in the same study
    seg_uid = pydicom.Dataset.from_json(segs[0]).SeriesInstanceUID
    stored = client.retrieve_series(study, seg_uid)
    seg = hd.seg.Segmentation.from_dataset(stored[0])
    assert seg.SegmentationType == "BINARY"
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == source[0].SeriesInstanceUID
    geometry = layer.metadata["tilewise_geometry"]
    normal = np.array(geometry.direction[2::3])
    z = {d.SOPInstanceUID: int(round(np.dot(np.array(d.ImagePositionPatient, float) - np.array(geometry.origin), normal)
                                     / geometry.spacing[2])) for d in source}
    uids = sorted(z, key=z.get)
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True,
                                               ignore_spatial_locations=True, skip_overlap_checks=True)
    np.testing.assert_array_equal(pixels, expected)

    drawn = viewer.add_labels(np.zeros((4, 4, 4), np.uint8), name="drawn", metadata={"tilewise_preview": False})
    widget.pacs_flow.update_send_button(drawn, idle=True)  # a result of no DICOM series
    assert not send.isEnabled() and send.toolTip() == NOT_DICOM

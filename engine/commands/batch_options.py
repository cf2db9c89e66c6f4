"""The flags of ``tilewise batch``: every ``predict`` flag that applies to a folder, plus resuming, sharding,
workers and Ray (names as in nnUNetv2_predict_from_modelfolder where nnU-Net has them)."""
from __future__ import annotations

import argparse
from pathlib import Path

from .options import add_output_type_option, add_prev_stage_option, add_run_options, add_uncertainty_option


def add_batch_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``tilewise batch`` on the ``tilewise`` command's sub-parsers."""
    batch = commands.add_parser(
        "batch", help="segment a folder of cases: pipelined, resumable, one failing case does not stop the rest",
        description="Segment every case of IN_DIR (nnU-Net-named files such as case_0000.nii.gz, or one sub-folder "
        "per DICOM series) into OUT_DIR. Finished cases (their outputs checked against the size and checksum "
        "recorded when they were written) are skipped, so running the same command again resumes; several batch "
        "processes on the same folders share the cases. OUT_DIR/batch_summary.json lists every case. Exit status: 0 "
        "when every case succeeded, 3 when some failed, 130 on Ctrl-C, 143 on SIGTERM.")
    batch.add_argument("-i", dest="input", required=True, help="folder of cases: nnU-Net-named files (case_0000.nii.gz, case_0001... for more channels; any supported format) or one sub-folder per DICOM series; or a study, series or search on a PACS (dicomweb+http(s)://HOST:PORT/dicom-web/series?Modality=CT&StudyDate=20260101-20261231, or dicom://AET@HOST:PORT/series?... by DIMSE), or a .txt file of such addresses, one per line")
    batch.add_argument("-o", dest="output", type=Path, required=True, help="output folder (same case names and file type as the input; DICOM becomes .nii.gz)")
    batch.add_argument("--series-uid", dest="series_uid", nargs="+", default=None, metavar="UID", help="the DICOM series to read, one per DICOM case (each case folder holds one of them; default: its largest image series)")
    add_run_options(batch)
    add_output_type_option(batch)
    add_prev_stage_option(batch)
    batch.add_argument("--save_probabilities", action="store_true", help="also write <case>.npz/.pkl as nnU-Net does")
    add_uncertainty_option(batch)
    batch.add_argument("--overwrite", action="store_true", help="redo cases whose outputs already exist (default: skip those that check whole and unchanged)")
    batch.add_argument("-num_parts", dest="num_parts", type=int, default=1, help="split the sorted cases into this many parts, as nnU-Net does (one part per machine or GPU)")
    batch.add_argument("-part_id", dest="part_id", type=int, default=0, help="which part this run does, 0 to num_parts - 1 (cases part_id, part_id + num_parts, ...)")
    batch.add_argument("--workers", type=int, default=1, help="threads that read and preprocess the next cases, and as many that export and write finished ones (default 1; not with --ray, whose actors run one case at a time)")
    batch.add_argument("--ray", metavar="auto|ADDRESS", default=None, help="spread the cases over Ray actors that each load the model once (needs the 'ray' extra; OUT_DIR on storage every node sees): 'auto' joins the running local cluster or starts one, ADDRESS joins that cluster")
    batch.add_argument("--ray-actors", dest="ray_actors", type=int, default=None, help="with --ray: how many actors (default: one per GPU, each with num_gpus=1; without GPUs one per node, sharing its CPUs)")
    batch.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary line")
    batch.add_argument("--verbose", action="store_true", help="print settings and each case's stage timings")
    batch.add_argument("--disable_progress_bar", action="store_true", help="no progress bar (one line per case instead)")
    batch.add_argument("--continue_prediction", action="store_true", help="accepted for nnU-Net compatibility; batch always skips finished cases unless --overwrite")
    batch.add_argument("-npp", type=int, default=None, help="accepted for nnU-Net compatibility; see --workers")
    batch.add_argument("-nps", type=int, default=None, help="accepted for nnU-Net compatibility; see --workers")

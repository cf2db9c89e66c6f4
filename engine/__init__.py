"""Tilewise's inference engine: nnU-Net v2 compatible sliding-window prediction with events and cancellation.

Plain Python + torch (+ nnunetv2); never imports Qt or napari, so it runs in batch jobs and Ray workers.
"""
from __future__ import annotations

from .runtime.quiet import silenced_stdout as _silenced_stdout

with _silenced_stdout():  # nnunetv2.paths prints hints about unset environment variables
    import nnunetv2.paths  # noqa: F401

from .errors import Cancelled, InputError, ModelError, OutOfMemoryError, TilewiseError, UntrustedCheckpointError
from .data.readers import read_volume
from .data.writers import write_labels
from .model.bundle import ModelBundle, available_folds
from .model.suitability import Finding, InputPolicy, check_image, set_input_policy
from .predictor import Predictor, Result, RunSettings
from .presets import Preset, get_preset, load_presets
from .events import CancelToken, FocusToken, LoadEvent, TileEvent
from .sliding.plan import Tile
from .data.volume import Geometry, Volume

# What applications built on the engine use (the viewer imports nothing else: a contract in pyproject.toml)
from .batch.stages import algorithm_of
from .data.dicom.seg import AlgorithmInfo
from .data.dicom.series import ENHANCED_VOLUME_CLASSES
from .data.dicom.source import require_dicom_extra
from .data.dicom.zips import is_zip
from .data.label_colors import label_color
from .data.outputs import is_dicom_seg_output, write_output
from .data.readers import IMAGE_SUFFIXES, image_suffix, is_dicom_folder, strip_suffix
from .data.safe_output import refuse_overwriting_inputs
from .estimate import (
    PRIORS,
    Estimate,
    FirstFold,
    ModelGrid,
    Span,
    StageCosts,
    cached_folds,
    estimate_run,
    learn_from_run,
    measure_first_fold,
    nonzero_extent,
)
from .model.bundle import resolve_model_dir
from .model.catalog import ModelInfo, default_search_roots, describe_model, find_models, totalsegmentator_root
from .model.totalseg import TaskSpec, resolve_task, task_name, totalsegmentator_installed
from .model.totalseg_catalog import TaskInfo, installed_tasks, task_model_folders
from .task_predictor import TaskPredictor, TaskResult
from .pacs import (
    PacsAccessError,
    PacsError,
    PacsServer,
    SeriesInfo,
    StudyInfo,
    StudySearch,
    check_connection,
    fetch_series,
    list_series,
    list_studies,
    open_server,
    server_address,
)
from .postprocess.uncertainty import UNCERTAIN_THRESHOLD, UncertainRegion, uncertain_regions, uncertain_volume_ml
from .preprocess.reuse import PreprocessCache
from .runtime.memory import is_out_of_memory
from .runtime.quiet import silenced_fd2

__all__ = [
    "Cancelled", "CancelToken", "Finding", "FocusToken", "Geometry", "InputError", "InputPolicy", "ModelBundle",
    "ModelError", "OutOfMemoryError", "Predictor", "Preset", "Result", "RunSettings", "Tile", "TileEvent", "TilewiseError",
    "UntrustedCheckpointError", "Volume", "available_folds", "check_image", "get_preset", "load_presets",
    "LoadEvent", "read_volume", "set_input_policy", "write_labels",
    # for applications (the viewer): DICOM, outputs, files, estimates, the model catalog, memory
    "AlgorithmInfo", "ENHANCED_VOLUME_CLASSES", "Estimate", "FirstFold", "IMAGE_SUFFIXES", "ModelGrid", "ModelInfo",
    "PRIORS", "PreprocessCache", "Span", "StageCosts", "algorithm_of", "cached_folds", "default_search_roots",
    "describe_model", "estimate_run", "find_models", "image_suffix", "is_dicom_folder", "is_dicom_seg_output",
    "is_out_of_memory", "is_zip", "label_color", "learn_from_run", "measure_first_fold", "nonzero_extent",
    "refuse_overwriting_inputs", "require_dicom_extra", "resolve_model_dir", "silenced_fd2", "strip_suffix",
    "write_output",
    # TotalSegmentator's tasks as one model each (-m totalseg:total)
    "TaskInfo", "TaskPredictor", "TaskResult", "TaskSpec", "installed_tasks", "resolve_task", "task_model_folders",
    "task_name", "totalsegmentator_installed", "totalsegmentator_root",
    # the PACS in the viewer: configured servers, study and series lists, a series pulled whole, Send to PACS
    "PacsAccessError", "PacsError", "PacsServer", "SeriesInfo", "StudyInfo", "StudySearch", "check_connection",
    "fetch_series", "list_series", "list_studies", "open_server", "server_address",
    # review guided by uncertainty: the map's regions to check and the uncertain volume
    "UNCERTAIN_THRESHOLD", "UncertainRegion", "uncertain_regions", "uncertain_volume_ml",
]

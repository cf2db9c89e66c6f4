"""Which backend runs the forward passes: resolving 'auto' and the device, then building the backend."""
from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import TilewiseError
from ..events import LoadReporter
from ..runtime.devices import resolve_device, resolve_precision
from . import ForwardBackend

OPENVINO_INSTALL = 'pip install "tilewise[openvino]"'


@dataclass(frozen=True)
class BackendChoice:
    """A backend name with the torch device its logits live on and, for OpenVINO, its device name."""

    name: str
    """'torch' or 'openvino'."""
    device: torch.device
    """Where the networks are built and the runner accumulates (always the CPU for OpenVINO)."""
    openvino_device: str | None = None
    """'CPU', 'GPU', 'GPU.1', ... for OpenVINO; None for torch."""


def openvino_available() -> bool:
    """True when the optional ``openvino`` package imports."""
    try:
        importlib.import_module("openvino")
    except ImportError:
        return False
    return True


def _require_openvino() -> None:
    if not openvino_available():
        raise TilewiseError("--backend", f"openvino is not installed; install it with: {OPENVINO_INSTALL}")


def _intel_gpu(name: str) -> str:
    """The OpenVINO name of the Intel GPU the user asked for as 'gpu' or 'gpu.N'."""
    import openvino

    wanted = name.upper()
    available = openvino.Core().available_devices
    if wanted not in available and not (wanted == "GPU" and any(d.startswith("GPU") for d in available)):
        raise TilewiseError("-device", f"no Intel GPU '{name}' found by OpenVINO (it sees: {', '.join(available)})")
    return wanted


def _torch_device(device: str | torch.device | None) -> torch.device:
    return device if isinstance(device, torch.device) else resolve_device(device)


def choose_backend(backend: str, device: str | torch.device | None = "auto") -> BackendChoice:
    """Resolve ``backend`` (auto, torch or openvino) and ``device`` (auto, cpu, cuda[:N], mps, or gpu[.N] for an
    Intel GPU through OpenVINO).

    'auto' takes torch on CUDA or Apple MPS when present, else OpenVINO when installed, else torch on the CPU.
    """
    name = str(device or "auto").lower()
    if name == "gpu" or name.startswith("gpu."):
        if backend == "torch":
            raise TilewiseError("-device", f"'{name}' is an Intel GPU, which only the openvino backend drives")
        _require_openvino()
        return BackendChoice("openvino", torch.device("cpu"), _intel_gpu(name))
    if backend == "openvino":
        _require_openvino()
        resolved = torch.device("cpu") if name == "auto" else _torch_device(device)
        if resolved.type != "cpu":
            raise TilewiseError("-device", "the openvino backend runs on the CPU or an Intel GPU (-device cpu or "
                                           f"gpu), not on {resolved.type}; use --backend torch for {resolved.type}")
        return BackendChoice("openvino", resolved, "CPU")
    if backend not in ("auto", "torch"):
        raise TilewiseError("--backend", f"unknown backend '{backend}' (use auto, torch or openvino)")
    resolved = _torch_device(device)
    if backend == "auto" and resolved.type == "cpu" and openvino_available():
        return BackendChoice("openvino", resolved, "CPU")
    return BackendChoice("torch", resolved)


def create_backend(
    choice: BackendChoice,
    networks: list[nn.Module],
    mirror_axes: tuple[int, ...],
    precision: str,
    input_shape: tuple[int, ...],
    on_load: LoadReporter | None = None,
) -> ForwardBackend:
    """The backend of ``choice`` for these fold networks; ``precision`` may still be 'reduced', ``input_shape`` is
    (batch, channels, *patch). ``on_load`` hears OpenVINO's steps for each fold (torch has none to report)."""
    if choice.name == "openvino":
        from .openvino_backend import OpenVINOBackend

        assert choice.openvino_device is not None
        return OpenVINOBackend(networks, mirror_axes, input_shape, precision, choice.openvino_device, on_load=on_load)
    from .torch_backend import TorchBackend

    return TorchBackend(networks, mirror_axes, choice.device, resolve_precision(precision, choice.device))

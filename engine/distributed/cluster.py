"""Starting or joining a Ray cluster, and how many batch actors it gets with which resources."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from types import ModuleType

from ..errors import TilewiseError

RAY_MISSING = 'needs Ray, an optional extra: pip install "tilewise[ray]"'


def import_ray() -> ModuleType:
    """The ``ray`` module, or a one-line :class:`TilewiseError` (exit 2) naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise TilewiseError("--ray", RAY_MISSING) from None
    return ray


@dataclass(frozen=True)
class Connection:
    """A driver's link to a cluster: its address, and whether this process connected (and so disconnects)."""

    address: str
    owned: bool

    def close(self) -> None:
        """Disconnect when this process connected (a local cluster it started stops with it)."""
        if self.owned:
            import_ray().shutdown()


def connect(address: str, verbose: bool) -> Connection:
    """Join the cluster at ``address``, or with ``auto`` the local one that is running (``ray start``) or a new
    local one; a process already connected (``ray.init`` in a script or test) keeps its connection.

    Actors' output reaches the terminal only with ``verbose``: the progress bar and the records say how cases went.
    """
    ray = import_ray()
    if ray.is_initialized():
        return Connection(ray.get_runtime_context().gcs_address, owned=False)
    try:  # ray.init() without an address joins the latest local cluster, else starts one: what 'auto' means here
        context = ray.init(address=None if address == "auto" else address, include_dashboard=False,
                           log_to_driver=verbose, logging_level=logging.INFO if verbose else logging.ERROR)
    except (ConnectionError, ValueError, RuntimeError) as error:
        raise TilewiseError("--ray", f"cannot start or join a Ray cluster at '{address}' ({error})") from None
    return Connection(context.address_info.get("gcs_address") or address, owned=True)


@dataclass(frozen=True)
class ActorPlan:
    """How many actors a batch starts and what each reserves (a GPU each when the cluster has GPUs)."""

    count: int
    num_cpus: int
    num_gpus: int

    def describe(self) -> str:
        """E.g. '2 actor(s), 1 CPU each' for the batch's first line."""
        gpu = ", 1 GPU" if self.num_gpus else ""
        return f"{self.count} actor(s), {self.num_cpus} CPU{gpu} each"


def plan_actors(nodes: list[dict], requested: int | None) -> ActorPlan:
    """One actor per GPU, or without GPUs one per node; ``requested`` (``--ray-actors``) sets the count.

    ``nodes`` are ``ray.nodes()``. The CPUs are shared out so that each actor fits the smallest node that would
    host it: CPU inference is multi-threaded, so CPU actors on one node split its cores (each actor runs that many
    threads) instead of oversubscribing them.
    """
    alive = [node["Resources"] for node in nodes if node.get("Alive", True)]
    gpu_nodes = [r for r in alive if r.get("GPU", 0) >= 1]
    if requested is not None and requested < 1:
        raise TilewiseError("--ray-actors", f"must be 1 or more (got {requested})")
    if gpu_nodes:
        gpus = sum(int(r["GPU"]) for r in gpu_nodes)
        count = requested or gpus
        if count > gpus:
            raise TilewiseError("--ray-actors", f"the cluster has {gpus} GPU(s), one per actor (got {count})")
        per_gpu = min(int(r.get("CPU", 1)) // int(r["GPU"]) for r in gpu_nodes)
        return ActorPlan(count, max(1, per_gpu), 1)
    cpus = [int(r.get("CPU", 1)) for r in alive] or [1]
    count = requested or len(cpus)
    per_node = -(-count // len(cpus))  # actors that share the smallest node when they are spread evenly
    return ActorPlan(count, max(1, min(cpus) // per_node), 0)

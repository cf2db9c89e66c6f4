"""The OpenVINO model cache cannot poison results: models are cached only after agreeing with torch, each entry is
checked against torch again the first time it is used on a machine (the entry records the machines, bound to the
hashes of its files, so changed files are checked again), and cache folders others may write are refused."""
from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tilewise.engine import Predictor, TilewiseError, get_preset, read_volume
from tilewise.engine.backends import select

pytestmark = pytest.mark.skipif(not select.openvino_available(), reason="the openvino extra is not installed")
posix_only = pytest.mark.skipif(os.name != "posix", reason="folder modes and owners are POSIX")
PATCH = (8, 12, 10)


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A fresh process-wide record of checked entries (as in a new process), and a list that grows by one for
    every check of a converted or cached model against torch."""
    from tilewise.engine.backends import openvino_backend
    from tilewise.engine.backends.ov_cache import VerifiedEntries

    calls: list[str] = []
    real = openvino_backend.agreement_error

    def counted(converted: torch.Tensor, reference: torch.Tensor, precision: str) -> str | None:
        calls.append(precision)
        return real(converted, reference, precision)

    monkeypatch.setattr(openvino_backend, "VERIFIED", VerifiedEntries())
    monkeypatch.setattr(openvino_backend, "agreement_error", counted)
    return calls


def tiny_networks(count: int = 1, seed: int = 0) -> list[nn.Module]:
    torch.manual_seed(seed)
    return [nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.LeakyReLU(),
                          nn.Conv3d(4, 3, (3, 1, 2), padding="same")).eval() for _ in range(count)]


def ov_backend(networks: list[nn.Module], cache_root: Path):
    from tilewise.engine.backends.openvino_backend import OpenVINOBackend
    from tilewise.engine.backends.ov_cache import ModelCache

    return OpenVINOBackend(networks, (), (2, 1, *PATCH), "fp32", "CPU", ModelCache(cache_root))


def entries(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def poison(entry: Path) -> bytes:
    """What an attacker who can write the entry would do: replace the weights in ``model.bin`` with others of the
    same size and type (the model still loads and compiles) and recompute the manifest's hashes. Returns the new
    ``model.bin``."""
    data = bytearray((entry / "model.bin").read_bytes())
    rng = np.random.default_rng(7)
    weights = re.findall(r'element_type="(f16|f32)" shape="[^"]*" offset="(\d+)" size="(\d+)"',
                         (entry / "model.xml").read_text())
    for kind, offset, size in weights:
        start, size = int(offset), int(size)
        if size >= 64:  # tensors, not scalars such as the norms' epsilon
            values = rng.uniform(-1, 1, size // (2 if kind == "f16" else 4)).astype(np.float16 if kind == "f16"
                                                                                     else np.float32)
            data[start:start + size] = values.tobytes()
    (entry / "model.bin").write_bytes(bytes(data))
    manifest = json.loads((entry / "manifest.json").read_text())
    manifest["files"]["model.bin"] = hashlib.sha256(bytes(data)).hexdigest()
    (entry / "manifest.json").write_text(json.dumps(manifest))
    return bytes(data)


# ---- the first-use check -------------------------------------------------------------------------------------


def test_a_poisoned_entry_with_a_valid_manifest_is_rebuilt(ct_model: Path, ct_case: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           checks: list[str]) -> None:
    monkeypatch.setenv("TILEWISE_CACHE_DIR", str(tmp_path / "cache"))
    preset = get_preset("fast").with_overrides(backend="openvino")
    volume = read_volume(ct_case)
    first = Predictor(ct_model, preset, device="cpu")
    assert first.backend.cache_events == ["converted"] and len(checks) == 1
    expected = first.predict(volume).labels
    (entry,) = entries(tmp_path / "cache" / "openvino")
    original = (entry / "model.bin").read_bytes()
    poisoned = poison(entry)
    assert poisoned != original

    from tilewise.engine.backends import openvino_backend

    openvino_backend.VERIFIED.clear()  # a new process: nothing checked yet
    rebuilt = Predictor(ct_model, preset, device="cpu")
    (event,) = rebuilt.backend.cache_events
    assert event.startswith("rebuilt: it disagrees with torch on the check tile"), event
    assert any("cached OpenVINO model rebuilt (it disagrees with torch" in n for n in rebuilt.backend.notes)
    assert len(checks) == 3, "the poisoned entry and its rebuilt model are each checked once"
    assert (entry / "model.bin").read_bytes() != poisoned
    np.testing.assert_array_equal(rebuilt.predict(volume).labels, expected)

    openvino_backend.VERIFIED.clear()
    again = Predictor(ct_model, preset, device="cpu")
    assert again.backend.cache_events == ["cached"] and again.backend.conversions == 0
    assert len(checks) == 3, "the rebuilt model agreed with torch on this machine when it was stored"


def another_machine(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make the backend see another machine (another CPU or OpenVINO version)."""
    from tilewise.engine.backends import openvino_backend

    monkeypatch.setattr(openvino_backend, "machine_identity", lambda core, device: name)


def test_each_entry_is_checked_once_per_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                checks: list[str]) -> None:
    from tilewise.engine.backends import openvino_backend

    networks = tiny_networks(2)
    first = ov_backend(networks, tmp_path)
    assert first.cache_events == ["converted", "converted"] and len(checks) == 2  # the conversions' checks
    second = ov_backend(networks, tmp_path)
    assert second.cache_events == ["cached", "cached"] and len(checks) == 2, "checked when converted: not again"

    openvino_backend.VERIFIED.clear()  # a new process on the same machine: the entries' records say they agreed
    third = ov_backend(networks, tmp_path)
    assert third.cache_events == ["cached", "cached"] and not third.notes and len(checks) == 2

    another_machine(monkeypatch, "machine-b")
    openvino_backend.VERIFIED.clear()  # a new process on another machine sharing the cache folder
    fourth = ov_backend(networks, tmp_path)
    assert fourth.cache_events == ["cached", "cached"] and not fourth.notes and len(checks) == 4
    ov_backend(networks, tmp_path)
    assert len(checks) == 4
    records = [json.loads((entry / "verified.json").read_text()) for entry in entries(tmp_path)]
    assert [len(record["machines"]) for record in records] == [2, 2], "both machines are kept"

    another_machine(monkeypatch, "machine-c")
    openvino_backend.VERIFIED.clear()
    backends, errors = [], []

    def load() -> None:
        try:
            backends.append(ov_backend(networks, tmp_path))
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=load) for _ in range(3)]  # the viewer and its time estimate load at once
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(backends) == 3
    assert all(b.cache_events == ["cached", "cached"] for b in backends)
    assert len(checks) == 6, "each of the two entries is checked once, whichever thread gets there first"
    torch.testing.assert_close(backends[0](torch.ones((2, 1, *PATCH))), first(torch.ones((2, 1, *PATCH))))


@pytest.mark.parametrize("record", ["not json {", '{"fingerprint": "0:0:0", "machines": ["MACHINE"]}',
                                    '{"fingerprint": "FINGERPRINT", "machines": "MACHINE"}', "[]"],
                         ids=["unreadable", "other files", "malformed", "not a record"])
def test_a_record_that_does_not_vouch_for_the_files_means_a_new_check(tmp_path: Path, record: str,
                                                                      checks: list[str]) -> None:
    from tilewise.engine.backends import openvino_backend

    networks = tiny_networks(1)
    first = ov_backend(networks, tmp_path)
    (entry,) = entries(tmp_path)
    kept = json.loads((entry / "verified.json").read_text())
    assert kept["machines"] == [first.machine] and len(checks) == 1
    (entry / "verified.json").write_text(record.replace("MACHINE", first.machine)
                                         .replace("FINGERPRINT", kept["fingerprint"]))
    openvino_backend.VERIFIED.clear()
    again = ov_backend(networks, tmp_path)
    assert again.cache_events == ["cached"] and len(checks) == 2, "checked against torch again"
    assert json.loads((entry / "verified.json").read_text()) == kept, "and recorded again"


def test_an_entry_whose_record_cannot_be_written_is_still_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              checks: list[str]) -> None:
    from tilewise.engine.backends import openvino_backend, ov_cache

    networks = tiny_networks(1)
    ov_backend(networks, tmp_path)
    (entry,) = entries(tmp_path)
    (entry / "verified.json").unlink()
    real_replace = os.replace

    def refused(source: str | Path, target: str | Path) -> None:  # a disk that fills as the record is written
        if Path(target).name == "verified.json":
            raise OSError(28, "No space left on device")
        real_replace(source, target)

    monkeypatch.setattr(ov_cache.os, "replace", refused)
    for expected_checks in (2, 3):  # each new process checks it again, and runs it
        openvino_backend.VERIFIED.clear()
        again = ov_backend(networks, tmp_path)
        assert again.cache_events == ["cached"] and len(checks) == expected_checks
    assert not (entry / "verified.json").exists()
    assert not [p for p in entry.iterdir() if p.name.startswith(".")], "no staging file is left behind"


# ---- storing only what agreed with torch ---------------------------------------------------------------------


def test_a_model_is_stored_only_after_it_agreed_with_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            checks: list[str]) -> None:
    from tilewise.engine.backends import openvino_backend

    counted = openvino_backend.agreement_error
    stored_at_check: list[int] = []

    def watching(converted: torch.Tensor, reference: torch.Tensor, precision: str) -> str | None:
        stored_at_check.append(len(list(tmp_path.glob("*/manifest.json"))))
        return counted(converted, reference, precision)

    monkeypatch.setattr(openvino_backend, "agreement_error", watching)
    ov_backend(tiny_networks(1), tmp_path)
    assert stored_at_check == [0] and len(list(tmp_path.glob("*/manifest.json"))) == 1


def test_a_conversion_failing_the_check_stores_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       checks: list[str]) -> None:
    from tilewise.engine.backends import openvino_backend

    monkeypatch.setattr(openvino_backend, "agreement_error", lambda *args: "made up")
    with pytest.raises(TilewiseError, match="disagrees with torch"):
        ov_backend(tiny_networks(1), tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == [], "no entry and no staging folder is left"


# ---- private cache folders -----------------------------------------------------------------------------------


@posix_only
@pytest.mark.parametrize("mode", [0o770, 0o720, 0o702, 0o777], ids=oct)
def test_a_cache_root_others_may_write_is_refused(tmp_path: Path, mode: int, checks: list[str]) -> None:
    root = tmp_path / "openvino"
    root.mkdir()
    root.chmod(mode)
    with pytest.raises(TilewiseError) as refused:
        ov_backend(tiny_networks(1), root)
    message = str(refused.value)
    assert "\n" not in message and str(root) in message and "writable by other users" in message
    assert f"chmod 700 {root}" in message and "TILEWISE_CACHE_DIR" in message
    assert list(root.iterdir()) == [] and checks == [], "refused before converting anything"


@posix_only
def test_an_entry_folder_others_may_write_is_refused(tmp_path: Path, checks: list[str]) -> None:
    networks = tiny_networks(1)
    ov_backend(networks, tmp_path)
    (entry,) = entries(tmp_path)
    entry.chmod(0o777)
    with pytest.raises(TilewiseError, match=re.escape(f"chmod 700 {entry}")):
        ov_backend(networks, tmp_path)


@posix_only
def test_a_cache_folder_of_another_user_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   checks: list[str]) -> None:
    root = tmp_path / "openvino"
    root.mkdir(mode=0o700)
    monkeypatch.setattr(os, "getuid", lambda: root.stat().st_uid + 1)
    with pytest.raises(TilewiseError, match="belongs to another user.*TILEWISE_CACHE_DIR") as refused:
        ov_backend(tiny_networks(1), root)
    assert str(root) in str(refused.value)


@posix_only
@pytest.mark.parametrize("mode", [0o700, 0o755], ids=oct)
def test_a_private_cache_root_is_accepted(tmp_path: Path, mode: int, checks: list[str]) -> None:
    root = tmp_path / "openvino"
    root.mkdir()
    root.chmod(mode)  # 0o755: others may read (older versions made it so) but not write
    networks = tiny_networks(1)
    assert ov_backend(networks, root).cache_events == ["converted"]
    assert ov_backend(networks, root).cache_events == ["cached"]


@posix_only
def test_the_cache_folders_are_created_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               checks: list[str]) -> None:
    from tilewise.engine.backends.ov_cache import ModelCache

    monkeypatch.setenv("TILEWISE_CACHE_DIR", str(tmp_path / "made" / "here"))
    previous = os.umask(0)  # even a umask that lets everyone write does not open them up
    try:
        from tilewise.engine.backends.openvino_backend import OpenVINOBackend

        backend = OpenVINOBackend(tiny_networks(1), (), (2, 1, *PATCH), "fp32", "CPU", ModelCache())
    finally:
        os.umask(previous)
    assert backend.cache_events == ["converted"] and backend.cache.root == tmp_path / "made" / "here" / "openvino"
    (entry,) = entries(backend.cache.root)
    for folder in (tmp_path / "made", tmp_path / "made" / "here", backend.cache.root, entry):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder

"""The viewer remembers trust by content (sha256 of plans.json and every checkpoint), not by folder path."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from qtpy.QtCore import QSettings
from qtpy.QtWidgets import QMessageBox

import model_factory
from tilewise.gui.controllers import trust as trust_module
from tilewise.gui.controllers.trust import TrustStore
from tilewise.gui.panels.dialogs import ask_to_trust


@pytest.fixture
def store(tmp_path: Path) -> TrustStore:
    return TrustStore(QSettings(str(tmp_path / "settings.ini"), QSettings.IniFormat))


@pytest.fixture
def model(tmp_path: Path, ct_model: Path) -> Path:
    copy = tmp_path / "models" / "a" / ct_model.name
    shutil.copytree(ct_model, copy)
    return copy


def _no_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_):
        raise AssertionError("a file was hashed")

    monkeypatch.setattr(trust_module.hashlib, "sha256", refuse)


def test_changed_plans_json_is_no_longer_trusted(store: TrustStore, model: Path) -> None:
    assert not store.is_trusted(model)
    store.trust(model)
    assert store.is_trusted(model)

    plans = json.loads((model / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] = "this.NotANetwork"
    (model / "plans.json").write_text(json.dumps(plans, indent=4))

    assert not store.is_trusted(model)


def test_changed_or_added_checkpoint_is_no_longer_trusted(store: TrustStore, model: Path) -> None:
    store.trust(model)
    model_factory.make_untrusted_checkpoint(model)
    assert not store.is_trusted(model)

    store.trust(model)
    assert store.is_trusted(model)
    shutil.copy(model / "fold_0" / "checkpoint_final.pth", model / "fold_0" / "checkpoint_best.pth")
    assert not store.is_trusted(model), "a checkpoint that was not there when the person said yes"


def test_same_content_elsewhere_stays_trusted(store: TrustStore, model: Path, tmp_path: Path) -> None:
    store.trust(model)
    copy = tmp_path / "elsewhere" / "renamed_model"
    shutil.copytree(model, copy)
    assert store.is_trusted(copy)
    again = TrustStore(QSettings(store.settings.fileName(), QSettings.IniFormat))  # the next session
    assert again.is_trusted(copy) and again.is_trusted(model)


def test_path_alone_is_not_trust(store: TrustStore, model: Path) -> None:
    store.settings.setValue("models/trusted", [str(model)])  # what older versions remembered: a folder path
    assert not store.is_trusted(model)


def test_files_are_hashed_once_and_untrusted_folders_not_at_all(store: TrustStore, model: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "other"
    shutil.copytree(model, other)
    (other / "plans.json").write_text((other / "plans.json").read_text() + "\n")  # another size
    store.trust(model)
    _no_hashing(monkeypatch)
    assert store.is_trusted(model)  # digests cached by (path, size, mtime)
    assert not store.is_trusted(other)  # names and sizes differ from every trusted content: nothing to hash


def test_trust_question_shows_the_folder_the_files_and_why(qapp, store: TrustStore, model: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[str, str]] = []
    monkeypatch.setattr(QMessageBox, "question", staticmethod(
        lambda parent, title, text, *a, **k: asked.append((title, text)) or QMessageBox.No))
    reason = f"{model / 'plans.json'}: the network class 'this.NotANetwork' is not in the known network packages"
    files = store.files(model)

    assert ask_to_trust(None, model, files, reason) is False

    [(title, text)] = asked
    assert "Trust" in title
    assert reason in text and f"Folder: {model}" in text
    assert "plans.json" in text and "fold_0/checkpoint_final.pth" in text
    assert [p.relative_to(model).as_posix() for p in files] == ["plans.json", "fold_0/checkpoint_final.pth"]

"""One series pulled whole or not at all, for an application that opens it (the viewer's Open from PACS).

The instances go into a staging folder beside the destination (``<name>.partial``) that gets the destination's name
only once every instance has arrived; a cancel or a failure removes it, so no half-pulled series is ever found under
the destination's name.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import output_error
from ..events import CancelToken
from .common import PacsServer, Progress

PARTIAL_SUFFIX = ".partial"


def fetch_series(server: PacsServer, study_uid: str, series_uid: str, folder: Path, progress: Progress | None = None,
                 cancel: CancelToken | None = None) -> Path:
    """Pull every instance of the series into ``folder`` (which must not exist yet), all or nothing; returns
    ``folder``. ``progress(instances)`` hears each instance received; ``cancel`` stops the pull at the next
    instance. Raises :class:`~tilewise.engine.errors.Cancelled` or :class:`~.common.PacsError` (a full disk:
    :class:`~tilewise.engine.errors.TilewiseError`, exit 3) and leaves neither ``folder`` nor its staging folder."""
    staging = folder.with_name(folder.name + PARTIAL_SUFFIX)
    shutil.rmtree(staging, ignore_errors=True)  # what an earlier, killed viewer left
    try:
        server.pull_series(study_uid, series_uid, staging, progress, cancel)
        staging.rename(folder)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise output_error(error, folder) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder

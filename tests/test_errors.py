"""Engine errors cross process boundaries (Ray actors, worker pools) with their kind, file and exit status."""
from __future__ import annotations

import pickle
from concurrent.futures import ProcessPoolExecutor

import pytest
from tilewise.engine.errors import InputError, OutOfMemoryError, TilewiseError
from tilewise.engine.model.checkpoint import UntrustedPlansError


def _raise_out_of_memory() -> None:
    raise OutOfMemoryError("/data/ct.nii.gz", "needs 40 GB, 12 GB are available")


@pytest.mark.parametrize("error", [
    InputError("/data/ct.nii.gz", "has 2 channels, the model takes 1"),
    OutOfMemoryError(None, "needs 40 GB"),
    UntrustedPlansError("/models/x/plans.json", "names code outside the known network packages"),
])
def test_errors_survive_pickling(error: TilewiseError) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert (copy.source, copy.problem, str(copy), copy.exit_code) == \
        (error.source, error.problem, str(error), error.exit_code)


def test_an_error_raised_in_a_worker_process_arrives_whole() -> None:
    with ProcessPoolExecutor(max_workers=1) as pool, pytest.raises(OutOfMemoryError) as raised:
        pool.submit(_raise_out_of_memory).result()
    assert raised.value.source == "/data/ct.nii.gz" and raised.value.exit_code == 3
    assert str(raised.value) == "/data/ct.nii.gz: needs 40 GB, 12 GB are available"

"""The conversion line's time left: the estimate's figure for a fold until one has converted, then their mean."""
from __future__ import annotations

from tilewise.gui.controllers.estimates import LoadPlan
from tilewise.gui.panels.loading import ConversionClock, about, target_name


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_time_left_starts_from_the_plan_and_follows_the_folds_converted() -> None:
    clock = Clock()
    times = ConversionClock(LoadPlan(openvino=True, convert_per_fold_s=10.0, pending=3), clock)
    times.start(1, 3)
    assert times.total_s() == 30.0  # this fold and two more, 10 s each
    clock.now += 4
    assert times.fold_left_s() == 6.0 and times.total_s() == 26.0
    clock.now += 16  # the first fold took 20 s: the others will too
    times.finish(20.0)
    times.start(2, 3)
    assert times.per_fold_s == 20.0 and times.total_s() == 40.0
    clock.now += 25  # longer than expected: nothing left of this fold, never negative
    assert times.fold_left_s() == 0.0 and times.total_s() == 20.0


def test_only_the_folds_the_cache_lacks_count() -> None:
    clock = Clock()
    one = ConversionClock(LoadPlan(openvino=True, convert_per_fold_s=8.0, pending=1), clock)
    one.start(2, 3)
    assert one.total_s() == 8.0
    unknown = ConversionClock(LoadPlan(openvino=True, convert_per_fold_s=8.0, pending=None), clock)
    unknown.start(2, 3)
    assert unknown.total_s() == 16.0


def test_words() -> None:
    assert about(38) == "40 s" and about(2) == "5 s" and about(200) == "3 min"
    assert target_name("CPU") == "this CPU" and target_name("GPU.1") == "this graphics chip"

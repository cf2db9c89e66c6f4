"""The viewer's state and work: Qt objects with signals, no widgets (they never import :mod:`tilewise.gui.panels`).

``run``: the dock's state machine and the engine run; ``files``: reading images and writing segmentations;
``estimates``: run-time estimates per preset; ``trust``: the model folders whose checkpoints may be unpickled;
``worker`` and ``tasks``: the threads they use.
"""

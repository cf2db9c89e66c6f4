"""The dock's views: one panel per step (``model``, ``image``, ``speed``, ``run``, ``review``) and their helpers.

Panels show what the controllers (:mod:`tilewise.gui.controllers`) report and offer the buttons that drive them; the
dock widget wires the two together.
"""

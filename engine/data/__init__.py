"""Data in and out: Volume and Geometry, readers, writers, cases, outputs that never destroy an input."""

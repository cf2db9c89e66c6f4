"""DICOM in and out: series folders, zips and multi-frame objects read into a Volume; DICOM SEG and RTSTRUCT
written against the source series."""

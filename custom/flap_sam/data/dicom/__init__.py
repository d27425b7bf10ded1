"""DICOM in and out: a hospital's series and their segmentations read as the NIfTI volumes are, DICOM SEG written.

* ``series``: find the image series in a folder, check one (one series, evenly spaced, no tilt, a
  decoder for its pixel data) and read it with highdicom into the NIfTI convention (RAS affine in mm,
  rescale slope and intercept applied);
* ``labels``: the ground truth of a series from a DICOM SEG or an RTSTRUCT, segment labels and ROI
  names mapped to the job's classes (``StructureNames``);
* ``writers``: DICOM written by the product: DICOM SEG of a prediction (``flap-sam infer``), and the
  CT/MR series, SEG and RTSTRUCT of the demo data (``flap-sam demo-data --format dicom``).

Nothing here logs or returns a DICOM tag value that identifies a person or a study: a series is
named by ``series_tag`` (a short hash of its UID) or by its path under the data root.
"""

from __future__ import annotations

import hashlib
import os

DICOM_PREAMBLE = 128  # a DICOM Part 10 file: 128 bytes of preamble, then "DICM"


def is_dicom_file(path: str) -> bool:
    """True for a DICOM Part 10 file (by its magic bytes, whatever its name), or a file named ``*.dcm`` (some
    writers leave out the preamble)."""
    if path.lower().endswith(".dcm") and os.path.isfile(path):
        return True
    try:
        with open(path, "rb") as f:
            f.seek(DICOM_PREAMBLE)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom(path: str | tuple[str, ...]) -> bool:
    """True when a datalist entry names DICOM: a folder or a tuple of files (a series), or a DICOM file (a SEG or
    an RTSTRUCT)."""
    return isinstance(path, tuple) or os.path.isdir(path) or is_dicom_file(path)


def series_tag(uid: str) -> str:
    """How a series is named in logs and tables: a short hash of its UID, never the UID itself."""
    return "series-" + hashlib.sha256(uid.encode()).hexdigest()[:10]

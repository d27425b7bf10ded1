"""What a hospital hands the product, tried systematically (hypothesis): datalists, setting values, NIfTI files.

Each property: the product either takes the input or refuses it with the package's own error in one
line that names the file or the setting, never another exception (a traceback on a site is a crashed
FLARE task). The cases tried, and how each ended, are counted and printed with ``-s``
(``BAD_INPUT_REPORT``); the site-level behaviour (a bad case left out and said in the site's log, or
the site stopping with that line) is tested in ``test_data.py`` and the federation tests.
"""

from __future__ import annotations

import collections
import gzip
import json
import math
import os
import tempfile

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flap_sam.data.datalist import load_datalist
from flap_sam.data.volumes import load_volume
from flap_sam.errors import DataError
from flap_sam.jobs.settings import check_settings
from flap_sam.training.schema import SCHEMA, package_defaults

# How each property's cases ended: printed at the end of the module (pytest -s) and checked to cover both outcomes.
BAD_INPUT_REPORT: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
pytestmark = pytest.mark.xdist_group("bad_input_properties")  # one worker: the report sees every case
EXAMPLES = settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)


def _one_line(message: str) -> bool:
    return bool(message) and "\n" not in message and "Traceback" not in message


# ---- datalists --------------------------------------------------------------------------------

_path = st.one_of(
    st.sampled_from(["a.nii.gz", "b.nii.gz", "sub/c.nii.gz", "../outside.nii.gz", "/abs/d.nii.gz", "", "a.nii.gz"]),
    st.text(max_size=12),
)
_value = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    _path,
    st.lists(_path, max_size=3),
    st.dictionaries(st.text(max_size=5), _path, max_size=2),
)
_entry = st.one_of(
    st.fixed_dictionaries({"image": _path, "label": _path}),
    st.fixed_dictionaries({"image": _path}),
    st.fixed_dictionaries({"label": _path}),
    st.dictionaries(st.sampled_from(["image", "label", "extra"]), _value, max_size=3),
    _value,
)
_split = st.one_of(st.lists(_entry, max_size=4), _value)
_good_path = st.sampled_from(["a.nii.gz", "b.nii.gz", "sub/c.nii.gz", "/abs/d.nii.gz", "../outside.nii.gz", "e.nii.gz"])
_good_entry = st.fixed_dictionaries({"image": _good_path, "label": _good_path})
_datalist = st.one_of(
    st.dictionaries(st.sampled_from(["training", "validation", "test", "other"]), _split, max_size=4),
    st.fixed_dictionaries(  # close to a real one: the mistakes a hand-edited list has (a case twice, a path out of the root)
        {"training": st.lists(_good_entry, min_size=1, max_size=3)},
        optional={"validation": st.lists(_good_entry, max_size=2), "test": st.lists(_good_entry, max_size=2)},
    ),
    _value,
)


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    return [s for v in value for s in _strings(v)] if isinstance(value, list) else []


@EXAMPLES
@given(content=_datalist, raw=st.one_of(st.none(), st.binary(max_size=40)), require_labels=st.booleans())
def test_any_datalist_is_read_or_refused_in_one_line_naming_the_file(content, raw, require_labels):
    with tempfile.TemporaryDirectory() as root:
        path = os.path.join(root, "site-1.json")
        with open(path, "wb") as f:
            f.write(raw if raw is not None else json.dumps(content).encode())
        try:
            lists = load_datalist(path, require_labels=require_labels)
        except DataError as e:
            assert _one_line(str(e)) and path in str(e), str(e)
            BAD_INPUT_REPORT["datalist"]["refused in one line"] += 1
            return
        BAD_INPUT_REPORT["datalist"]["read"] += 1
        seen = [case.image for cases in lists.values() for case in cases]
        assert len(seen) == len(set(seen)), "a case listed twice (or in two splits) was read"
        for cases in lists.values():
            for case in cases:
                images = case.image if isinstance(case.image, tuple) else (case.image,)
                for p in (*images, *([case.label] if case.label else [])):
                    assert os.path.isabs(p)
                    named_absolute = p in {os.path.normpath(v) for v in _strings(content) if os.path.isabs(v)}
                    assert named_absolute or not os.path.relpath(p, root).startswith(".."), f"{p} escapes the data root"
                assert case.label is not None or not require_labels


def test_a_case_in_two_splits_and_a_relative_path_out_of_the_root_are_named(tmp_path):
    """The two datalist mistakes that silently corrupt a result: a test case also trained on, a path that leaves the data root."""
    path = tmp_path / "site-1.json"
    path.write_text(
        json.dumps({"training": [{"image": "a.nii.gz", "label": "la.nii.gz"}], "test": [{"image": "./a.nii.gz", "label": "la.nii.gz"}]})
    )
    with pytest.raises(DataError, match=r"test\[0\]: image ./a.nii.gz is also training\[0\]; list each case once"):
        load_datalist(str(path))
    path.write_text(json.dumps({"training": [{"image": "../x/a.nii.gz", "label": "la.nii.gz"}]}))
    with pytest.raises(DataError, match=r"training\[0\]: image ../x/a.nii.gz is outside the data root"):
        load_datalist(str(path))
    path.write_text(json.dumps({"training": [{"image": "/elsewhere/a.nii.gz", "label": "/elsewhere/la.nii.gz"}]}))
    assert load_datalist(str(path))["training"][0].image == "/elsewhere/a.nii.gz"  # an absolute path names a file anywhere


# ---- settings ---------------------------------------------------------------------------------

_any_value = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["auto", "none", "flap", "lite_medsam", "1e-3", "true", "", " ", "-1"]),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=6), st.one_of(st.integers(), st.floats(), st.text(max_size=4)), max_size=3),
)
_names = [s.name for s in SCHEMA]


_defaults = package_defaults()
_changes = st.one_of(
    st.dictionaries(st.one_of(st.sampled_from(_names), st.text(min_size=1, max_size=12)), _any_value, min_size=1, max_size=3),
    st.sampled_from(_names).map(lambda name: {name: _defaults[name]}),  # a setting at its own default: always taken
)


@EXAMPLES
@given(changes=_changes)
def test_any_setting_value_is_taken_or_refused_in_one_line_naming_the_setting(changes):
    try:
        job = check_settings(changes, where="job J: ")
    except ValueError as e:
        message = str(e)
        assert _one_line(message) and message.startswith("job J: "), message
        said = message.removeprefix("job J: ")
        named = any(said.startswith((n, repr(n), f"no setting {n}", f"no setting {n!r}")) for n in [*changes, *_names])
        assert named, f"the error does not start with the setting it is about: {message}"
        BAD_INPUT_REPORT["settings"]["refused in one line"] += 1
        return
    BAD_INPUT_REPORT["settings"]["taken"] += 1
    defaults = package_defaults()
    for name in changes:
        assert name in defaults
        taken = job[name]
        if isinstance(taken, float):
            assert math.isfinite(taken), f"{name} took a non-finite value"


# ---- NIfTI files ------------------------------------------------------------------------------

_dtypes = st.sampled_from(
    [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.int64, np.uint64, np.float32, np.float64]
)  # what NIfTI can hold
_shape = st.one_of(
    st.lists(st.integers(min_value=0, max_value=6), min_size=1, max_size=5).map(tuple),
    st.just((6, 6, 4)),
)
_special = st.sampled_from([None, "nan", "inf", "max", "min", "huge"])


def _affine(kind: str, spacing: float) -> np.ndarray:
    affine = np.diag([spacing, spacing, 2.0 * spacing, 1.0])
    if kind == "sheared":
        affine[0, 1] = 0.7 * spacing  # not orthogonal: a sheared grid
    elif kind == "oblique":
        c, s = math.cos(0.4), math.sin(0.4)
        affine[:3, :3] = affine[:3, :3] @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    elif kind == "singular":
        affine[2, 2] = 0.0
    elif kind == "nan":
        affine[0, 3] = np.nan
    return affine


def _nifti(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """An image whose grid is only its sform (nibabel would refuse to decompose a singular or NaN affine into a qform)."""
    header = nib.Nifti1Header()
    header.set_data_dtype(data.dtype)
    header.set_data_shape(data.shape)
    header.set_sform(affine, code=1)
    return nib.Nifti1Image(data, None, header)


def _fill(shape: tuple, dtype, special: str | None, rng: np.random.Generator) -> np.ndarray:
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else np.finfo(dtype)
    data = rng.integers(0, 3, size=shape).astype(dtype)
    if data.size and special is not None:
        flat = data.reshape(-1)
        if special in ("nan", "inf") and np.issubdtype(dtype, np.floating):
            flat[0] = np.nan if special == "nan" else np.inf
        elif special in ("max", "huge"):
            flat[0] = info.max
        elif special == "min":
            flat[0] = info.min
    return data


@EXAMPLES
@given(
    image_shape=_shape,
    image_dtype=_dtypes,
    image_special=_special,
    label_shape=st.one_of(st.none(), _shape),
    label_dtype=_dtypes,
    label_special=_special,
    affine=st.sampled_from(["plain", "sheared", "oblique", "singular", "nan"]),
    label_affine=st.sampled_from(["same", "plain", "shifted"]),
    spacing=st.sampled_from([1.0, 0.5, 1e-6, 1e6]),
    truncate=st.booleans(),
    extension_kb=st.sampled_from([0, 0, 256]),
    channel=st.sampled_from([None, 0, 3]),
    seed=st.integers(0, 2**16),
)
def test_any_nifti_case_is_read_or_refused_in_one_line_naming_the_file(
    image_shape,
    image_dtype,
    image_special,
    label_shape,
    label_dtype,
    label_special,
    affine,
    label_affine,
    spacing,
    truncate,
    extension_kb,
    channel,
    seed,
):
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as root:
        image_path, label_path = os.path.join(root, "img.nii.gz"), os.path.join(root, "lab.nii.gz")
        image_affine = _affine(affine, spacing)
        image = _nifti(_fill(image_shape, image_dtype, image_special, rng), image_affine)
        if extension_kb:  # a huge header: a NIfTI extension of that size
            image.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"x" * (extension_kb * 1024)))
        nib.save(image, image_path)
        if truncate:
            with gzip.open(image_path, "rb") as f:
                raw = f.read()
            with open(image_path, "wb") as f:
                f.write(gzip.compress(raw)[: max(10, len(raw) // 3)])
        if label_shape is not None:
            grid = image_affine if label_affine == "same" else _affine("plain", spacing if label_affine == "plain" else 2 * spacing)
            nib.save(_nifti(_fill(label_shape, label_dtype, label_special, rng), grid), label_path)
        try:
            volume = load_volume(image_path, label_path if label_shape is not None else None, num_classes=2, channel=channel)
        except DataError as e:
            message = str(e)
            assert _one_line(message) and (image_path in message or label_path in message), message
            BAD_INPUT_REPORT["nifti"]["refused in one line"] += 1
            return
        BAD_INPUT_REPORT["nifti"]["read"] += 1
        assert volume.image.ndim == 3 and min(volume.image.shape) >= 1
        assert np.isfinite(np.asarray(volume.image, dtype=np.float64)).all()
        assert all(math.isfinite(s) and s > 0 for s in volume.source.spacing)
        if volume.label is not None:
            assert volume.label.shape == volume.image.shape and int(volume.label.max()) <= 2


def test_zz_every_property_met_both_outcomes():
    """Runs last in this module (its name): each property saw inputs it took and inputs it refused."""
    if set(BAD_INPUT_REPORT) != {"datalist", "settings", "nifti"}:
        pytest.skip("run with the whole module")
    print("\nbad input tried, and how each ended:")
    for what, outcomes in sorted(BAD_INPUT_REPORT.items()):
        print(f"  {what}: " + ", ".join(f"{n} {outcome}" for outcome, n in sorted(outcomes.items())))
    for what, outcomes in BAD_INPUT_REPORT.items():
        assert len(outcomes) == 2, f"{what}: {dict(outcomes)}"

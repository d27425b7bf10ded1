"""DICOM in and out: series, SEG and RTSTRUCT read as the NIfTI they were made from; bad series refused in one line;
``flap-sam prepare dicom``; ``flap-sam infer`` writes a DICOM SEG over its series.

The DICOM is real DICOM written with pydicom and highdicom from the project's own demo volumes (and pydicom's
bundled test files for the readers' edge cases): no reader is mocked.
"""

from __future__ import annotations

import json
import os
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file

from flap_sam.cli.main import main
from flap_sam.data.demo import ScannerShift, kits_phantom
from flap_sam.data.dicom import series_tag
from flap_sam.data.dicom.labels import StructureNames, read_label
from flap_sam.data.dicom.series import read_series
from flap_sam.data.dicom.writers import StudyIdentity, write_rtstruct, write_seg, write_series
from flap_sam.data.volumes import load_volume
from flap_sam.errors import DataError
from flap_sam.federated.adapter_model import AdapterModel

CLASSES = ("kidney", "tumour")
ROI_NAMES = ("Kidney_L", "GTV")  # a hospital's names: need structure_names
STRUCTURES = StructureNames.build(CLASSES, {"kidney": "kidney l|Kidney_R", "tumour": ["GTV"]})


def _nifti_case(folder, seed=0, whole_numbers=True, affine=None):
    """A kits phantom as NIfTI image and label (int16 HU when ``whole_numbers``, else float32)."""
    image, label = kits_phantom(np.random.default_rng(seed), ScannerShift.for_site("site-1", (5.0, 6.5)))
    image = np.round(image).astype(np.int16) if whole_numbers else image.astype(np.float32)
    affine = np.diag([5.5, 5.5, 2.5, 1.0]) if affine is None else affine
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "image.nii.gz", folder / "label.nii.gz"
    nib.save(nib.Nifti1Image(image, affine), paths[0])
    nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), paths[1])
    return [str(p) for p in paths]


def _dicom_case(folder, image_path, label_path, label_kind="SEG", orientation="axial", modality="CT", identity=None):
    """The NIfTI case written as a DICOM series and a SEG or RTSTRUCT of it; returns (series folder, label file)."""
    import highdicom as hd

    series_folder = folder / "series"
    write_series(nib.load(image_path), str(series_folder), modality, identity or StudyIdentity(), orientation)
    series = read_series(str(series_folder))
    label = hd.Volume.from_nibabel(nib.load(label_path), frame_of_reference_uid=series.volume.frame_of_reference_uid)
    labels = np.asarray(label.match_geometry(series.volume).array).astype(np.uint8)
    path = str(folder / f"{label_kind}.dcm")
    (
        write_seg(labels, series, ROI_NAMES, path, automatic=False)
        if label_kind == "SEG"
        else write_rtstruct(labels, series, ROI_NAMES, path)
    )
    return str(series_folder), path


@pytest.mark.parametrize("orientation", ["axial", "axial_reversed", "sagittal"])
@pytest.mark.parametrize("label_kind", ["SEG", "RTSTRUCT"])
def test_a_dicom_case_reads_as_the_nifti_it_was_made_from(tmp_path, orientation, label_kind):
    """Voxel-exact for CT in HU and for the label, orientation-exact, whatever order the slices are stored in."""
    image, label = _nifti_case(tmp_path / "nifti", affine=np.array([[-5.5, 0, 0, 90], [0, 5.5, 0, -40], [0, 0, 2.5, 7], [0, 0, 0, 1.0]]))
    series, label_file = _dicom_case(tmp_path / "dicom", image, label, label_kind, orientation)
    from_nifti = load_volume(image, label, 2)
    from_dicom = load_volume(series, label_file, 2, structures=STRUCTURES)
    assert from_dicom.image.dtype == np.int16 and np.array_equal(from_dicom.image, from_nifti.image)
    assert np.array_equal(from_dicom.label, from_nifti.label) and set(np.unique(from_nifti.label)) == {0, 1, 2}
    np.testing.assert_allclose(from_dicom.spacing, from_nifti.spacing, atol=1e-4)
    canonical = [
        nib.as_closest_canonical(nib.Nifti1Image(np.zeros(v.source.original_shape), v.affine)).affine for v in (from_dicom, from_nifti)
    ]
    np.testing.assert_allclose(canonical[0], canonical[1], atol=1e-3)  # the same place in the patient, in mm
    assert from_dicom.name == series_tag(str(pydicom.dcmread(os.path.join(series, "0001.dcm")).SeriesInstanceUID))
    assert np.array_equal(from_dicom.source.load_label(), from_nifti.label)


def test_an_mr_series_of_real_numbers_reads_back_within_its_rescale(tmp_path):
    image, label = _nifti_case(tmp_path / "nifti", whole_numbers=False)
    series, label_file = _dicom_case(tmp_path / "dicom", image, label, modality="MR")
    from_nifti, from_dicom = load_volume(image, label, 2), load_volume(series, label_file, 2, structures=STRUCTURES)
    slope = float(pydicom.dcmread(os.path.join(series, "0001.dcm")).RescaleSlope)
    assert from_dicom.image.dtype == np.float32 and slope < 0.1
    assert np.abs(from_dicom.image - from_nifti.image).max() <= slope / 2 + 1e-4
    assert np.array_equal(from_dicom.label, from_nifti.label)


def test_structures_map_by_folded_name_and_the_higher_class_wins(tmp_path):
    assert STRUCTURES.class_of("KIDNEY-L") == 1 and STRUCTURES.class_of("gtv") == 2 and STRUCTURES.class_of("External") is None
    assert StructureNames.build(CLASSES).class_of("Kidney") == 1  # a class matches its own name
    with pytest.raises(ValueError, match=r"structure_names: 'liver' is not a class of this job \(classes: kidney, tumour\)"):
        StructureNames.build(CLASSES, {"liver": "Liver"})
    with pytest.raises(ValueError, match=r"structure_names: 'Kidney' is given to tumour and to kidney"):
        StructureNames.build(CLASSES, {"tumour": "Kidney"})
    image, label = _nifti_case(tmp_path / "nifti")
    series, rtstruct = _dicom_case(tmp_path / "dicom", image, label, "RTSTRUCT")
    without_mapping = StructureNames.build(CLASSES)
    with pytest.raises(DataError, match=r"RTSTRUCT.dcm: none of its structures \('Kidney_L', 'GTV'\) is a class of this job"):
        load_volume(series, rtstruct, 2, structures=without_mapping)
    only_tumour = StructureNames.build(CLASSES, {"tumour": "GTV"})  # Kidney_L maps to nothing: left out, the rest read
    assert set(np.unique(load_volume(series, rtstruct, 2, structures=only_tumour).label)) == {0, 2}


def _slices(folder):
    return sorted(os.path.join(folder, f) for f in os.listdir(folder))


def _edit(path, **changes):
    ds = pydicom.dcmread(path)
    for key, value in changes.items():
        setattr(ds, key, value)
    ds.save_as(path)


@pytest.fixture
def series_folder(tmp_path):
    image, label = _nifti_case(tmp_path / "nifti")
    return _dicom_case(tmp_path / "dicom", image, label)[0]


def _position(path):
    return [float(v) for v in pydicom.dcmread(path).ImagePositionPatient]


@pytest.mark.parametrize(
    "spoil, message",
    [
        ("remove_one", r"0006\.dcm: 1 missing slice\(s\): 5\.00 mm from 0004\.dcm where series-\w+ steps 2\.50 mm"),
        ("duplicate", r"0005\.dcm: at the same position as \S+0004\.dcm \(a duplicated slice in series-\w+\)"),
        ("uneven", r"0005\.dcm: uneven slice spacing: 3\.50 mm from 0004\.dcm where series-\w+ steps 2\.50 mm"),
        ("tilt", r"series-\w+'s slices are shifted in-plane along the stack by up to 1\d\.\d mm \(gantry tilt"),
        ("second_series", r"holds 2 series \(series-\w+ \(\d+ files\), series-\w+ \(\d+ files\)\); name a folder with one series"),
        ("reoriented", r"0003\.dcm: oriented differently from \S+0001\.dcm in series-\w+"),
        ("multi_frame", r"no single-frame CT or MR DICOM image in it|0001\.dcm: a multi-frame \(enhanced\) image object"),
        ("compressed", r"0001\.dcm: pixel data compressed as High-Throughput JPEG 2000.*no decoder for it is installed"),
    ],
)
def test_a_series_that_is_not_a_volume_is_one_line_naming_a_file(series_folder, spoil, message):
    files = _slices(series_folder)
    if spoil == "remove_one":
        os.remove(files[4])
    elif spoil == "duplicate":
        _edit(files[4], ImagePositionPatient=_position(files[3]))
    elif spoil == "uneven":
        for k, path in enumerate(files[4:], start=4):
            position = _position(path)
            _edit(path, ImagePositionPatient=[position[0], position[1], position[2] + 1.0])
    elif spoil == "tilt":
        for k, path in enumerate(files):
            position = _position(path)
            _edit(path, ImagePositionPatient=[position[0], position[1] + 0.8 * k, position[2]])
    elif spoil == "second_series":
        _edit(files[0], SeriesInstanceUID=pydicom.uid.generate_uid())
    elif spoil == "reoriented":
        _edit(files[2], ImageOrientationPatient=[0, 1, 0, 0, 0, -1])
    elif spoil == "multi_frame":
        for path in files:
            _edit(path, SOPClassUID=pydicom.uid.EnhancedCTImageStorage, NumberOfFrames=1)
    elif spoil == "compressed":
        ds = pydicom.dcmread(files[0])
        ds.file_meta.TransferSyntaxUID = pydicom.uid.HTJ2KLossless
        ds.PixelData = pydicom.encaps.encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 64])
        ds.save_as(files[0])
    with pytest.raises(DataError, match=message) as raised:
        load_volume(series_folder, None, 2)
    assert "\n" not in str(raised.value)


def test_a_localizer_mixed_into_a_series_is_left_out(series_folder):
    files = _slices(series_folder)
    scout = os.path.join(series_folder, "scout.dcm")
    shutil.copy(files[0], scout)
    _edit(
        scout,
        ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"],
        ImageOrientationPatient=[1, 0, 0, 0, 0, -1],
        SOPInstanceUID=pydicom.uid.generate_uid(),
    )
    assert load_volume(series_folder, None, 2).num_slices == len(files)


def test_a_label_of_another_series_is_refused(tmp_path):
    image, label = _nifti_case(tmp_path / "nifti")
    _, seg_a = _dicom_case(tmp_path / "a", image, label)
    series_b, _ = _dicom_case(tmp_path / "b", image, label, "RTSTRUCT")
    with pytest.raises(DataError, match=rf"label {seg_a}: this SEG references series-\w+, not its image series-\w+"):
        load_volume(series_b, seg_a, 2, structures=STRUCTURES)
    with pytest.raises(DataError, match=r"label \S+SEG.dcm: a DICOM label needs its DICOM image series as the image, not a NIfTI file"):
        load_volume(image, seg_a, 2, structures=STRUCTURES)


def test_pydicom_test_files_one_line_each(tmp_path):
    """pydicom's own files: one slice is not a volume; an RTSTRUCT of a series that is not here; not a label."""
    single = tmp_path / "single"
    single.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), single)
    with pytest.raises(DataError, match=r"CT_small\.dcm: series-\w+ has one slice, not a volume"):
        load_volume(str(single), None, 1)
    image, label = _nifti_case(tmp_path / "nifti")
    series, _ = _dicom_case(tmp_path / "dicom", image, label)
    with pytest.raises(DataError, match=r"rtstruct\.dcm: this RTSTRUCT references series-\w+, not its image series-\w+"):
        load_volume(series, get_testdata_file("rtstruct.dcm"), 2, structures=STRUCTURES)
    with pytest.raises(DataError, match=r"MR_small\.dcm: a DICOM MR, not a SEG or an RTSTRUCT"):
        load_volume(series, get_testdata_file("MR_small.dcm"), 2, structures=STRUCTURES)


def _studies(root, n=4, identity=None):
    """A site's DICOM folder: n studies (SEG and RTSTRUCT alternating) and one series without a label."""
    for i in range(n):
        image, label = _nifti_case(root.parent / "nifti" / f"{i}", seed=i)
        _dicom_case(root / f"study_{i}", image, label, "SEG" if i % 2 == 0 else "RTSTRUCT", identity=identity)
    image, _ = _nifti_case(root.parent / "nifti" / "unlabelled", seed=9)
    write_series(nib.load(image), str(root / "study_unlabelled" / "series"), "CT", StudyIdentity())
    (root / "README.txt").write_text("not DICOM")


def test_prepare_dicom_lists_what_it_found_and_writes_a_datalist_the_site_reads(tmp_path, capsys):
    _studies(tmp_path / "pacs")
    out = tmp_path / "datalists"
    args = [
        "prepare",
        "dicom",
        "--raw",
        str(tmp_path / "pacs"),
        "--out",
        str(out),
        "--classes",
        "kidney,tumour",
        "--modality",
        "ct",
        "--structure-names",
        "kidney=Kidney_L",
        "--structure-names",
        "tumour=GTV",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert printed.count("| Kidney_L -> kidney; GTV -> tumour | case |") == 4
    assert "study_unlabelled/series | - |  | skipped: no SEG or RTSTRUCT references it |" in printed
    assert 'set structure_names = {"kidney": "Kidney_L", "tumour": "GTV"}' in printed
    datalist = json.loads((out / "site-1.json").read_text())
    assert (len(datalist["training"]), len(datalist["validation"])) == (3, 1)
    entry = datalist["training"][0]
    assert os.path.isdir(entry["image"]) and pydicom.dcmread(entry["label"]).Modality in ("SEG", "RTSTRUCT")
    volume = load_volume(entry["image"], entry["label"], 2, structures=STRUCTURES)
    assert set(np.unique(volume.label)) == {0, 1, 2}


def test_prepare_dicom_skips_a_bad_series_with_its_reason_and_goes_on(tmp_path, capsys):
    _studies(tmp_path / "pacs", n=3)
    files = _slices(tmp_path / "pacs" / "study_1" / "series")
    os.remove(files[5])
    args = [
        "prepare",
        "dicom",
        "--raw",
        str(tmp_path / "pacs"),
        "--out",
        str(tmp_path / "dl"),
        "--classes",
        "kidney,tumour",
        "--modality",
        "ct",
        "--structure-names",
        "kidney=Kidney_L|Kidney_R",
        "--structure-names",
        "tumour=GTV",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "skipped: study_1/series/0007.dcm: 1 missing slice(s): 5.00 mm from 0005.dcm" in printed
    datalist = json.loads((tmp_path / "dl" / "site-1.json").read_text())
    assert len(datalist["training"]) + len(datalist["validation"]) == 2
    assert main(args[:-4] + ["--structure-names", "liver=Liver"]) == 2
    assert "--structure-names: 'liver' is not a class of this job (classes: kidney, tumour)" in capsys.readouterr().err


def test_infer_on_a_series_writes_a_dicom_seg_over_it(tmp_path, capsys):
    import highdicom as hd

    image, label = _nifti_case(tmp_path / "nifti")
    series, _ = _dicom_case(tmp_path / "dicom", image, label)
    adapter = tmp_path / "FL_global_model.pt"
    torch.save(
        {"model": AdapterModel({"model_type": "vit_test", "image_size": 64, "dataset": "kits", "preset": "flap", "rank": 4}).state_dict()},
        adapter,
    )
    model = ["--adapter", str(adapter), "--model", "vit_test", "--image-size", "64", "--rank", "4", "--device", "cpu"]
    out = tmp_path / "prediction.dcm"
    assert main(["infer", "--image", series, "--out", str(out), *model]) == 0
    seg = hd.seg.segread(str(out))
    source = read_series(series)
    assert seg.SeriesInstanceUID != source.datasets[0].SeriesInstanceUID
    assert seg.StudyInstanceUID == source.datasets[0].StudyInstanceUID and seg.FrameOfReferenceUID == source.datasets[0].FrameOfReferenceUID
    assert str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID) == source.files.uid
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["kidney", "tumour"]
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Kidney"
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    written = read_label(str(out), source, StructureNames.build(CLASSES))  # back onto the series: what infer segmented
    counts = {"kidney": int((written == 1).sum()), "tumour": int((written == 2).sum())}
    assert capsys.readouterr().out.strip() == f"wrote {out}: voxels per class {counts}"
    nifti_out = tmp_path / "prediction.nii.gz"
    assert main(["infer", "--image", series, "--out", str(nifti_out), *model]) == 0
    assert np.array_equal(np.asarray(nib.load(nifti_out).dataobj), np.asarray(source.nifti(written).dataobj))


# What a hospital's headers carry and nothing the server receives or writes, nor any log, may show
IDENTITY = StudyIdentity(
    patient_name="Doe^Jane^Quinn",
    patient_id="MRN-48151623",
    birth_date="19710412",
    accession="ACC-2342-77",
    study_uid="1.2.826.0.1.3680043.8.498.48151623420815",
)


@pytest.mark.slow
def test_a_federation_over_dicom_sites_scores_as_the_same_data_in_nifti_and_no_identifying_value_leaves(tmp_path):
    """site-1 holds DICOM studies (SEG and RTSTRUCT), site-2 the same cases as NIfTI: the global model scores the
    same on both, and none of the headers' identifying values reaches the server's workspace or any log."""
    from jobtools import TEST_MODEL, TEST_TRAINING, copy_job, run_simulator

    data = tmp_path / "data"
    dicom_cases, nifti_cases = [], []
    for i in range(4):
        image, label = _nifti_case(data / "nifti" / f"case_{i}", seed=i)
        series, label_file = _dicom_case(data / "pacs" / f"study_{i}", image, label, "SEG" if i % 2 == 0 else "RTSTRUCT", identity=IDENTITY)
        dicom_cases.append({"image": series, "label": label_file})
        nifti_cases.append({"image": image, "label": label})
    for site, cases in (("site-1", dicom_cases), ("site-2", nifti_cases)):
        (data / f"{site}.json").write_text(json.dumps({"training": cases[:3], "validation": cases[3:], "test": []}))
    uids = {
        str(pydicom.dcmread(os.path.join(c["image"], "0001.dcm"))[key].value)
        for c in dicom_cases
        for key in ("SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")
    }
    settings = {
        **TEST_MODEL,
        **TEST_TRAINING,
        "max_steps_per_round": 4,
        "num_rounds": 2,
        "min_clients": 2,
        "data_root": str(data),
        "structure_names": {"kidney": "Kidney_L", "tumour": "GTV"},
    }
    ws = tmp_path / "ws"
    result = run_simulator(copy_job("kits_lora", tmp_path, settings), ws, 2, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    job_dir = ws / "server" / "simulate_job"
    scores = json.loads((job_dir / "cross_site_val" / "cross_val_results.json").read_text())
    on_dicom, on_nifti = scores["site-1"]["SRV_FL_global_model.pt"], scores["site-2"]["SRV_FL_global_model.pt"]
    assert on_dicom["dice"] > 0 and on_dicom == pytest.approx(on_nifti, abs=1e-6)
    identifying = [
        IDENTITY.patient_name,
        "Doe",
        "Quinn",
        IDENTITY.patient_id,
        IDENTITY.birth_date,
        IDENTITY.accession,
        IDENTITY.study_uid,
        *uids,
    ]
    written = [p for p in ws.rglob("*") if p.is_file()]
    assert any(p.name == "log.txt" and "site-1" in str(p) for p in written)  # the site's own log is searched too
    for path in written:
        content = path.read_bytes()
        found = [value for value in identifying if value.encode() in content]
        assert not found, f"{path} holds {found}"
    assert (result.stdout + result.stderr).find("Doe^") < 0 and all(u not in result.stdout + result.stderr for u in uids)


@pytest.mark.parametrize(
    "value, message",
    [
        ({"liver": "Liver"}, r"structure_names: 'liver' is not a class of this job \(classes: kidney, tumour\)"),
        ({"tumour": 3}, r"structure_names: the names of tumour must be a list of texts or one text separated by '\|', not 3"),
        ({"kidney": "GTV", "tumour": "gtv"}, r"structure_names: 'gtv' is given to tumour and to kidney"),
    ],
)
def test_a_bad_structure_names_setting_is_refused_when_the_job_is_written(value, message):
    from flap_sam.jobs.settings import check_settings

    with pytest.raises(ValueError, match=message):
        check_settings({"dataset": "kits", "structure_names": value})
    names = check_settings({"dataset": "kits", "structure_names": {"tumour": ["GTV", "GTV_primary"]}}).site.structures(CLASSES)
    assert names.class_of("gtv primary") == 2


def test_a_datalist_may_list_a_series_file_by_file_even_in_a_folder_with_another_series(tmp_path):
    from flap_sam.data.datalist import load_datalist

    image, label = _nifti_case(tmp_path / "nifti")
    series, seg = _dicom_case(tmp_path / "dicom", image, label)
    files = [os.path.relpath(f, tmp_path) for f in _slices(series)]
    other, _ = _dicom_case(tmp_path / "other", image, label)
    for i, path in enumerate(_slices(other)):  # a second series in the same folder: the folder alone is ambiguous
        shutil.copy(path, os.path.join(series, f"other_{i:04d}.dcm"))
    (tmp_path / "datalist.json").write_text(json.dumps({"training": [{"image": files, "label": os.path.relpath(seg, tmp_path)}]}))
    case = load_datalist(str(tmp_path / "datalist.json"))["training"][0]
    assert isinstance(case.image, tuple) and len(case.image) == 16
    volume = load_volume(case.image, case.label, 2, structures=STRUCTURES)
    assert np.array_equal(volume.label, load_volume(image, label, 2).label)
    with pytest.raises(DataError, match=r"holds 2 series"):
        load_volume(series, None, 2)
    with pytest.raises(DataError, match=rf"image {tmp_path / 'nope.dcm'}: file not found \(1 of the series' 17 files missing\)"):
        load_volume((*case.image, str(tmp_path / "nope.dcm")), None, 2)

"""DICOM the product writes: a prediction as DICOM SEG, and the demo data as CT/MR series with a SEG or an RTSTRUCT.

A SEG of a prediction references its source series (same study, frame of reference and slices), so a
PACS viewer, 3D Slicer or OHIF shows it as a segmentation over the study: one segment per class,
named from the job's classes. Every file is written atomically (a temporary name, then a rename).
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset

from flap_sam.data.dicom.series import DicomSeries
from flap_sam.files import write_atomically

MANUFACTURER = "FLAP-SAM"
ORIENTATIONS = {"axial": "HPL", "axial_reversed": "FAR", "coronal": "PHL", "sagittal": "LFP"}  # (slice, row, column) axes


def _uid() -> str:
    return pydicom.uid.generate_uid()


@dataclass(frozen=True)
class StudyIdentity:
    """The patient and study a written series belongs to (the demo data's made-up people).

    Attributes are the DICOM values written: PatientName, PatientID, PatientBirthDate, AccessionNumber,
    StudyInstanceUID, StudyDate.
    """

    patient_name: str = "Demo^Phantom"
    patient_id: str = "DEMO-0001"
    birth_date: str = ""
    accession: str = ""
    study_uid: str = field(default_factory=_uid)
    study_date: str = "20260101"


def _stored_values(array: np.ndarray) -> tuple[np.ndarray, float, float, int]:
    """(stored pixels, rescale slope, intercept, pixel representation) that give back ``array``.

    Whole numbers within int16 are stored as they are (CT in HU, slope 1); anything else as uint16
    over the array's range (read back within slope / 2).
    """
    whole = np.round(array)
    if np.array_equal(whole, array) and whole.min() >= -32768 and whole.max() <= 32767:
        return whole.astype(np.int16), 1.0, 0.0, 1
    low, high = float(array.min()), float(array.max())
    slope = (high - low) / 65535.0 or 1.0
    return np.round((array - low) / slope).astype(np.uint16), slope, low, 0


def _file_dataset(sop_class: str, sop_instance: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.UID(sop_class)
    meta.MediaStorageSOPInstanceUID = pydicom.uid.UID(sop_instance)
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_instance
    return ds


def _save(ds: Dataset, path: str) -> None:
    write_atomically(path, lambda tmp: ds.save_as(tmp, enforce_file_format=True), suffix=".dcm")


def _identify(ds: Dataset, identity: StudyIdentity) -> None:
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = (
        identity.patient_name,
        identity.patient_id,
        identity.birth_date,
        "O",
    )
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime, ds.StudyID = identity.study_uid, identity.study_date, "120000", "1"
    ds.AccessionNumber, ds.ReferringPhysicianName = identity.accession, ""


def write_series(
    image, folder: str, modality: str, identity: StudyIdentity, orientation: str = "axial", series_number: int = 1
) -> list[str]:
    """Write a NIfTI image as a single-frame DICOM series (one file per slice) in ``folder``.

    Args:
        image: ``nibabel`` 3D image (RAS affine in mm); CT values in HU.
        modality: ``CT`` | ``MR``.
        orientation: how the slices are cut and ordered (``ORIENTATIONS``: axial, axial_reversed, coronal, sagittal).

    Returns:
        the files written, in stack order.
    """
    import highdicom as hd

    sop_class = {"CT": pydicom.uid.CTImageStorage, "MR": pydicom.uid.MRImageStorage}[modality]
    volume = hd.Volume.from_nibabel(image, frame_of_reference_uid=_uid()).to_patient_orientation(ORIENTATIONS[orientation])
    stored, slope, intercept, signed = _stored_values(np.asarray(volume.array, dtype=np.float64))
    direction = np.asarray(volume.direction)  # columns: unit vectors of the slice, row and column axes (LPS)
    row_spacing, column_spacing = volume.pixel_spacing
    series_uid = _uid()
    os.makedirs(folder, exist_ok=True)
    files = []
    for k in range(stored.shape[0]):
        ds = _file_dataset(sop_class, _uid())
        _identify(ds, identity)
        ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = modality, series_uid, series_number, k + 1
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = volume.frame_of_reference_uid, ""
        ds.Manufacturer, ds.ImageType = MANUFACTURER, ["ORIGINAL", "PRIMARY", "AXIAL" if orientation.startswith("axial") else "OTHER"]
        ds.ImagePositionPatient = [float(v) for v in (volume.affine @ [k, 0, 0, 1])[:3]]
        ds.ImageOrientationPatient = [float(v) for v in (*direction[:, 2], *direction[:, 1])]
        ds.PixelSpacing = [float(row_spacing), float(column_spacing)]
        ds.SliceThickness = float(volume.spacing_between_slices)
        ds.Rows, ds.Columns = stored.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, signed
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", f"{intercept:.10g}"
        if modality == "CT":
            ds.RescaleType, ds.KVP = "HU", "120"
        else:
            ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "SE", "NONE", "", "3D"
            ds.EchoTime, ds.RepetitionTime, ds.EchoTrainLength = "10", "500", "1"
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        path = os.path.join(folder, f"{k + 1:04d}.dcm")
        _save(ds, path)
        files.append(path)
    return files


def _property_type(name: str):
    """A SNOMED CT code for a class name pydicom knows (``kidney`` -> Kidney), else a code of this product's own scheme."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    camel = "".join(part.capitalize() for part in re.split(r"[^0-9A-Za-z]+", name) if part)
    known = getattr(codes.SCT, camel, None) if camel else None
    if known is not None:
        return known
    return hd.sr.CodedConcept(value=name[:16] or "class", scheme_designator="99FLAPSAM", meaning=name)


def segment_descriptions(class_names: Sequence[str], automatic: bool) -> list:
    """highdicom ``SegmentDescription`` of each class, numbered from 1 in label order."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = (
        hd.AlgorithmIdentificationSequence(name=MANUFACTURER, version=_version(), family=codes.cid7162.ArtificialIntelligence)
        if automatic
        else None
    )
    return [
        hd.seg.SegmentDescription(
            segment_number=i,
            segment_label=name,
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=_property_type(name),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC if automatic else hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            algorithm_identification=algorithm,
        )
        for i, name in enumerate(class_names, start=1)
    ]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("flap-sam")
    except PackageNotFoundError:
        return "unknown"


def write_seg(labels: np.ndarray, series: DicomSeries, class_names: Sequence[str], path: str, automatic: bool = True) -> str:
    """Write a class-index label on ``series``' grid as a DICOM SEG that references the series.

    Args:
        labels: (slices, rows, cols) uint8 class indices in the series' stack order (0 = background).
        class_names: the job's classes: segment ``i`` is class ``i``, labelled with its name.
        automatic: a prediction (algorithm FLAP-SAM) or a manual ground truth (the demo data's).
    """
    import highdicom as hd

    if labels.shape != tuple(series.volume.spatial_shape):
        raise ValueError(f"{path}: labels {labels.shape} are not on the series' grid {tuple(series.volume.spatial_shape)}")
    seg = hd.seg.Segmentation(
        source_images=series.datasets,
        pixel_array=labels.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(class_names, automatic),
        series_instance_uid=_uid(),
        series_number=300,
        sop_instance_uid=_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name="FLAP-SAM LoRA-SAM" if automatic else "demo ground truth",
        software_versions=_version(),
        device_serial_number="0",
        series_description="FLAP-SAM segmentation" if automatic else "ground truth",
        omit_empty_frames=False,
    )
    write_atomically(path, lambda tmp: seg.save_as(tmp), suffix=".dcm")
    return path


def _contours(mask: np.ndarray) -> list[np.ndarray]:
    """Closed contours of a 2D binary mask, as (N, 2) arrays of (row, col) pixel indices.

    Traced halfway between pixel centres (contourpy at level 0.5), so filling each contour's inside by
    pixel centres, holes by the even-odd rule, gives the mask back exactly.
    """
    import contourpy

    padded = np.pad(mask.astype(np.float64), 1)
    lines = contourpy.contour_generator(z=padded, line_type=contourpy.LineType.Separate).lines(0.5)
    closed = []
    for line in lines:
        points = np.asarray(line)[:, ::-1] - 1.0  # (x, y) of the padded array -> (row, col) of the mask
        if len(points) > 1 and np.allclose(points[0], points[-1]):
            points = points[:-1]
        if len(points) >= 3:
            closed.append(points)
    return closed


def write_rtstruct(labels: np.ndarray, series: DicomSeries, roi_names: Sequence[str], path: str) -> str:
    """Write a class-index label on ``series``' grid as an RTSTRUCT of closed planar contours, one ROI per class.

    Args:
        labels: (slices, rows, cols) uint8 class indices in the series' stack order.
        roi_names: the ROI name of class ``i`` (index ``i - 1``): a hospital's own names (``Kidney_L``, ``GTV``).
    """
    first = series.datasets[0]
    ds = _file_dataset(pydicom.uid.RTStructureSetStorage, _uid())
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "StudyID",
        "AccessionNumber",
        "ReferringPhysicianName",
    ):
        setattr(ds, keyword, first.get(keyword, ""))
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = "RTSTRUCT", _uid(), 200, 1
    ds.Manufacturer, ds.StructureSetLabel = MANUFACTURER, "ground truth"
    now = datetime.datetime.now()
    ds.StructureSetDate, ds.StructureSetTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    contour_images = [Dataset() for _ in series.datasets]
    for item, source in zip(contour_images, series.datasets):
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
    referenced_series = Dataset()
    referenced_series.SeriesInstanceUID, referenced_series.ContourImageSequence = first.SeriesInstanceUID, contour_images
    referenced_study = Dataset()
    referenced_study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management (what RTSTRUCTs cite)
    referenced_study.ReferencedSOPInstanceUID, referenced_study.RTReferencedSeriesSequence = first.StudyInstanceUID, [referenced_series]
    frame = Dataset()
    frame.FrameOfReferenceUID, frame.RTReferencedStudySequence = first.FrameOfReferenceUID, [referenced_study]
    ds.ReferencedFrameOfReferenceSequence = [frame]
    ds.StructureSetROISequence, ds.ROIContourSequence, ds.RTROIObservationsSequence = [], [], []
    affine = np.asarray(series.volume.affine)
    for number, name in enumerate(roi_names, start=1):
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID, roi.ROIName = number, first.FrameOfReferenceUID, name
        roi.ROIGenerationAlgorithm = "MANUAL"
        ds.StructureSetROISequence.append(roi)
        contours = []
        for k in range(labels.shape[0]):
            for points in _contours(labels[k] == number):
                indices = np.column_stack([np.full(len(points), k), points, np.ones(len(points))])
                patient = (affine @ indices.T).T[:, :3]
                contour = Dataset()
                contour.ContourGeometricType, contour.NumberOfContourPoints = "CLOSED_PLANAR", len(points)
                contour.ContourData = [f"{v:.4f}" for v in patient.ravel()]
                image = Dataset()
                image.ReferencedSOPClassUID, image.ReferencedSOPInstanceUID = (
                    series.datasets[k].SOPClassUID,
                    series.datasets[k].SOPInstanceUID,
                )
                contour.ContourImageSequence = [image]
                contours.append(contour)
        roi_contour = Dataset()
        roi_contour.ReferencedROINumber, roi_contour.ROIDisplayColor, roi_contour.ContourSequence = number, [255, 0, 0], contours
        ds.ROIContourSequence.append(roi_contour)
        observation = Dataset()
        observation.ObservationNumber, observation.ReferencedROINumber = number, number
        observation.RTROIInterpretedType, observation.ROIInterpreter = "ORGAN", ""
        ds.RTROIObservationsSequence.append(observation)
    _save(ds, path)
    return path


# The demo data's ROI and segment names, as a hospital might name the classes (one per class, label order): some
# need the site setting structure_names (tumour = GTV), some match a class by its own name (Kidney = kidney).
DEMO_STRUCTURE_NAMES = {"kits": ("Kidney", "GTV"), "chest_ct": ("Lungs", "Spine", "Ribs"), "ixi": ("Brain",), "prostate": ("Prostate",)}
DEMO_MODALITY = {"kits": "CT", "chest_ct": "CT", "ixi": "MR", "prostate": "MR"}


def write_demo_studies(dataset: str, nifti_cases: Sequence[tuple[str, str]], out_dir: str, site_name: str) -> list[str]:
    """A demo site's cases as a hospital stores them: one study per case (made-up patient), a single-frame series
    and its ground truth, a DICOM SEG for even cases and an RTSTRUCT for odd ones, named ``DEMO_STRUCTURE_NAMES``.

    Layout: ``out_dir/case_NNN/image/*.dcm`` and ``out_dir/case_NNN/SEG.dcm`` or ``RTSTRUCT.dcm``.

    Args:
        nifti_cases: (image, label) NIfTI paths.

    Returns:
        the case folders written.
    """
    import highdicom as hd
    import nibabel as nib

    from flap_sam.data.dicom.series import read_series

    folders = []
    for i, (image_path, label_path) in enumerate(nifti_cases):
        folder = os.path.join(out_dir, f"case_{i:03d}")
        identity = StudyIdentity(patient_name=f"Demo^{site_name.replace('-', '')}^{i:03d}", patient_id=f"{site_name}-{i:03d}")
        write_series(nib.load(image_path), os.path.join(folder, "image"), DEMO_MODALITY[dataset], identity)
        series = read_series(os.path.join(folder, "image"))
        label = hd.Volume.from_nibabel(nib.load(label_path), frame_of_reference_uid=series.volume.frame_of_reference_uid)
        labels = np.asarray(label.match_geometry(series.volume).array).astype(np.uint8)
        if i % 2 == 0:
            write_seg(labels, series, DEMO_STRUCTURE_NAMES[dataset], os.path.join(folder, "SEG.dcm"), automatic=False)
        else:
            write_rtstruct(labels, series, DEMO_STRUCTURE_NAMES[dataset], os.path.join(folder, "RTSTRUCT.dcm"))
        folders.append(folder)
    return folders

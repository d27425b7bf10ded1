"""Per-dataset preprocessing choices (the paper's recipe), selected by the job's ``dataset`` setting."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetProfile:
    """How a dataset's volumes are normalised and what its labels mean.

    Attributes:
        name: ``kits`` | ``ixi`` | ``prostate`` | ``chest_ct``.
        modality: ``ct`` (clip to the site's foreground 0.5/99.5 percentiles, z-score) or
            ``mri`` (clip at the volume's 99th percentile, min-max to [0, 1]).
        class_names: foreground classes in label order (label 1 first).
        ct_window: HU clip window used when site statistics are not available (``flap-sam infer``).
        label_map: source label value -> class index, for datasets whose files use other values
            (applied when a label file is read; values not listed are kept).
        channel: the volume to use of 4D images (several sequences in one file); None refuses them.
    """

    name: str
    modality: str
    class_names: tuple[str, ...]
    ct_window: tuple[float, float] | None = None
    label_map: tuple[tuple[int, int], ...] = ()
    channel: int | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


PROFILES: dict[str, DatasetProfile] = {
    # KiTS19 foreground percentiles as reported by nnU-Net for the pooled dataset.
    "kits": DatasetProfile("kits", "ct", ("kidney", "tumour"), ct_window=(-79.0, 304.0)),
    "ixi": DatasetProfile("ixi", "mri", ("brain",)),
    # Some prostate sites label the gland 2 (whole gland in two zones): both mean prostate.
    "prostate": DatasetProfile("prostate", "mri", ("prostate",), label_map=((2, 1),)),
    # Real chest CT (slicerio's) with simulated subjects and scanners: flap_sam.data.chest_ct. Window: the foreground
    # 0.5 / 99.5 percentiles of its three training sites' demo volumes (-915..486, -952..566, -939..458 HU), averaged.
    "chest_ct": DatasetProfile("chest_ct", "ct", ("lung", "vertebrae", "ribs"), ct_window=(-935.0, 503.0)),
}


def get_profile(name: str) -> DatasetProfile:
    if name not in PROFILES:
        raise ValueError(f"dataset '{name}' is unknown; choose one of {sorted(PROFILES)}")
    return PROFILES[name]

"""Everything a site loads at start-up: datalist, checked volumes, intensity statistics, prepared stacks."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flap_sam.data.datalist import find_datalist, load_datalist
from flap_sam.data.demo import DEMO_DATASETS, ensure_demo_site
from flap_sam.data.dicom.labels import StructureNames
from flap_sam.data.intensity import ForegroundSamples, IntensityNormalizer
from flap_sam.data.profiles import DatasetProfile
from flap_sam.data.stacks import PreparedVolume, normalize_resized, resize_volume
from flap_sam.data.volumes import load_volume
from flap_sam.errors import DataError

if TYPE_CHECKING:
    import torch

    from flap_sam.data.volumes import VolumeSource

logger = logging.getLogger(__name__)

DEMO = "demo"


@dataclass
class SiteData:
    """A site's prepared volumes (kept in memory at model resolution, compact: see ``PreparedVolume``).

    ``validation`` scores every round's global model (model selection); ``test`` (the
    published held-out split, may be empty) is only used by cross-site evaluation.
    """

    train: list[PreparedVolume]
    validation: list[PreparedVolume]
    test: list[PreparedVolume]
    normalizer: IntensityNormalizer
    datalist_path: str

    @classmethod
    def load(
        cls,
        profile: DatasetProfile,
        data_root: str,
        site_name: str,
        image_size: int,
        num_classes: int,
        datalist: str | None = None,
        train_volumes: int = 0,
        structures: StructureNames | None = None,
    ) -> SiteData:
        """Load and check every volume of the site's datalist.

        ``data_root == "demo"`` makes (once) and uses this site's synthetic demo data. ``train_volumes`` > 0
        keeps at most the first that many training volumes (the setting ``train_volumes``). ``structures`` maps
        DICOM labels' segments and ROIs to classes (default: the classes' own names).
        Raises ``DataError`` naming the first bad file; nothing is trained before all data passed.
        """
        if data_root == DEMO:
            if profile.name not in DEMO_DATASETS:
                raise DataError(
                    f"data_root demo: the built-in demo data are for the {', '.join(DEMO_DATASETS)} tasks; this "
                    f"job's own task ({', '.join(profile.class_names)}) needs its own data_root"
                )
            data_root = ensure_demo_site(profile.name, site_name)
        path = find_datalist(data_root, site_name, datalist)
        cases = load_datalist(path, data_root)
        if train_volumes > 0:
            cases["training"] = cases["training"][:train_volumes]
        if not cases["validation"]:
            raise DataError(f"datalist {path}: the 'validation' list is empty; a site needs validation volumes for model selection")
        structures = structures or StructureNames.build(profile.class_names)
        return cls._prepare(profile, cases, image_size, num_classes, path, structures)

    @classmethod
    def _prepare(
        cls, profile: DatasetProfile, cases: dict, image_size: int, num_classes: int, path: str, structures: StructureNames
    ) -> SiteData:
        """Load, check and resize one volume at a time; only model-resolution stacks stay in memory.

        CT statistics come from foreground samples taken while each training volume is loaded,
        and are applied to the resized volumes once all of them are in.
        """
        samples, foreground = ForegroundSamples(len(cases["training"])), False
        resized: dict[str, list[tuple[torch.Tensor, torch.Tensor | None, VolumeSource]]] = {}
        for section in ("training", "validation", "test"):
            resized[section] = []
            for case in cases[section]:
                volume = load_volume(case.image, case.label, num_classes, profile.label_map, profile.channel, structures)
                if section == "training":
                    foreground = foreground or bool(volume.label is not None and volume.label.any())
                    if profile.modality == "ct":
                        samples.add(volume)
                resized[section].append((*resize_volume(volume, image_size), volume.source))
                del volume
        if not foreground:
            raise DataError(f"datalist {path}: no training volume has any foreground label")
        normalizer = IntensityNormalizer(profile.modality)
        if profile.modality == "ct":
            normalizer.ct_stats = samples.statistics()
        prepared = {
            section: [PreparedVolume(normalize_resized(image, normalizer), label, source) for image, label, source in items]
            for section, items in resized.items()
        }
        logger.info(
            "Site data: %d training, %d validation and %d test volumes from %s",
            len(prepared["training"]),
            len(prepared["validation"]),
            len(prepared["test"]),
            path,
        )
        return cls(
            train=prepared["training"],
            validation=prepared["validation"],
            test=prepared["test"],
            normalizer=normalizer,
            datalist_path=path,
        )

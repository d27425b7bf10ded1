"""Everything a site loads at start-up: datalist, checked volumes, intensity statistics, prepared stacks."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flap_sam.data.datalist import find_datalist, load_datalist
from flap_sam.data.demo import DEMO_GENERATORS, ensure_demo_site
from flap_sam.data.errors import DataError
from flap_sam.data.intensity import IntensityNormalizer
from flap_sam.data.profiles import DatasetProfile
from flap_sam.data.stacks import PreparedVolume, prepare_volume
from flap_sam.data.volumes import load_volume

logger = logging.getLogger(__name__)

DEMO = "demo"


@dataclass
class SiteData:
    """A site's prepared volumes (kept in memory at model resolution).

    ``validation`` scores every round's global model (model selection); ``test`` (the
    published held-out split, may be empty) is only used by cross-site evaluation.
    """

    train: list[PreparedVolume]
    validation: list[PreparedVolume]
    test: list[PreparedVolume]
    normalizer: IntensityNormalizer
    datalist_path: str

    @classmethod
    def load(cls, profile: DatasetProfile, data_root: str, site_name: str, image_size: int, num_classes: int, datalist: str | None = None) -> "SiteData":
        """Load and check every volume of the site's datalist.

        ``data_root == "demo"`` makes (once) and uses this site's synthetic demo data.
        Raises ``DataError`` naming the first bad file; nothing is trained before all data passed.
        """
        if data_root == DEMO:
            if profile.name not in DEMO_GENERATORS:
                raise DataError(f"data_root demo: the built-in demo data are for the {', '.join(DEMO_GENERATORS)} tasks; this "
                                f"job's own task ({', '.join(profile.class_names)}) needs its own data_root")
            data_root = ensure_demo_site(profile.name, site_name)
        path = find_datalist(data_root, site_name, datalist)
        cases = load_datalist(path, data_root)
        if not cases["validation"]:
            raise DataError(f"datalist {path}: the 'validation' list is empty; a site needs validation volumes for model selection")
        def load(section: str) -> list:
            return [load_volume(c.image, c.label, num_classes, profile.label_map, profile.channel) for c in cases[section]]

        train, val, test = load("training"), load("validation"), load("test")
        if not any(v.label.any() for v in train):
            raise DataError(f"datalist {path}: no training volume has any foreground label")
        normalizer = IntensityNormalizer(profile.modality).fit(train)
        logger.info("Site data: %d training, %d validation and %d test volumes from %s", len(train), len(val), len(test), path)
        return cls(
            train=[prepare_volume(v, normalizer, image_size) for v in train],
            validation=[prepare_volume(v, normalizer, image_size) for v in val],
            test=[prepare_volume(v, normalizer, image_size) for v in test],
            normalizer=normalizer,
            datalist_path=path,
        )

"""Wire bytes of one site's round payload per preset and transport mode, serialised the way FLARE sends it."""

from __future__ import annotations

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, MetaKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.utils.decomposers import flare_decomposers
from nvflare.app_common.decomposers import common_decomposers

from flap_sam.federated.traffic import serialized_size
from flap_sam.federated.transport import TransportCodec
from flap_sam.model.factory import ModelSpec, exchange_schema

flare_decomposers.register()
common_decomposers.register()


def random_payload(spec: ModelSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """The preset's exchanged tensors (names and shapes from the schema) filled with N(0, 0.02) float32."""
    rng = np.random.default_rng(seed)
    return {name: rng.normal(0, 0.02, shape).astype(np.float32) for name, shape in exchange_schema(spec).items()}


def wire_bytes(payload: dict[str, np.ndarray], mode: str) -> int:
    """Bytes of the site's train result after the transport codec, as FOBS serialises it."""
    result = DXO(DataKind.WEIGHTS, data=payload, meta={MetaKey.NUM_STEPS_CURRENT_ROUND: 1}).to_shareable()
    return serialized_size(TransportCodec(mode, "encode").process(result, FLContext()))

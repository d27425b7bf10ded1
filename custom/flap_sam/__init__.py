"""FLAP-SAM: federated, parameter-efficient fine-tuning of SAM on 3D medical images.

Folders follow the architecture:
``model`` (SAM, LoRA, presets), ``data`` (volumes, datalists, demo data),
``training`` (local training, volume inference, metrics),
``federated`` (NVFlare Learner, filters, server components) and ``cli``.
"""

__version__ = "0.1.0"

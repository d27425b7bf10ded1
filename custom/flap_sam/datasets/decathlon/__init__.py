"""The Medical Segmentation Decathlon layout (``dataset.json``, ``imagesTr/``, ``labelsTr/``): a hospital's own task."""

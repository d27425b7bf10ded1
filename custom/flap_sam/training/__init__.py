"""Local training, volume inference and metrics: plain PyTorch/MONAI, no FLARE."""

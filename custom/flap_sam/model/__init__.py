"""SAM built from segment-anything's own modules, LoRA adapters and the paper's presets."""

"""Site data: Decathlon-style datalists of NIfTI volumes, 2.5D slice stacks, demo phantoms."""

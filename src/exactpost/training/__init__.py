"""Training utilities: checkpoints (safetensors + JSON card, atomic writes, exact resume)."""

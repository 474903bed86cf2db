"""Files in and out: checkpoints (safetensors + JSON card) and images (data sets, PNG)."""

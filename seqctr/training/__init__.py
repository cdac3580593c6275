"""Ray Train: the per-worker loop and the TorchTrainer wiring."""

"""The CTR model and what rebuilds it: features, the model, checkpoints, the predictor, metrics."""

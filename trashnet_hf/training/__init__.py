"""Training: the Accelerate loop, recipe, checkpoints, tracking, evaluation, metrics, calibration,
embeddings for near-duplicate grouping, plots and the final report."""

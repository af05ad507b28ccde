"""Training: the Accelerate loop, recipe, checkpoints, tracking, evaluation, metrics, calibration,
plots and the final report."""

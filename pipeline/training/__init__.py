"""Training: the Ray Train loop, the tiny profile's pretraining, per-pixel losses."""

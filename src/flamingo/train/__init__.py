"""Training: configs, the trainer, and the techniques it applies to a model in one documented order."""

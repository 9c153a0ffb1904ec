"""Training: the recipe, the training loop (single process and torchrun), fine-tuning, evaluation, metrics."""

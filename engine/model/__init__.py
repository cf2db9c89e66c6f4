"""The model folder: nnU-Net bundle (plans, dataset, folds), checkpoints and trust, the catalog of installed models."""

"""The sliding window: tile plan and Gaussian, tile order, the runner that accumulates logits."""

"""Network-grid logits to labels on the input grid: resampling, label rules, export."""

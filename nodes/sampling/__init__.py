"""What runs inside the sampler: the embedding on the wire, the conditioning read, the per-row
LoRA wrapper."""

"""The UnHype Trainer's ComfyUI side: the run, the ComfyUI denoiser, gradient checkpointing and
the headless entry."""

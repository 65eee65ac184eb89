"""Layer 7: one training run, from a run directory to a saved adapter or model.

Owns the subprocess entry point (`python -m backend.training.run RUN_DIR`), the trainer callbacks
that write the run's events (callbacks), multi-GPU and multi-node launch commands (distributed) and
the checks before a run starts (checks). May import every layer below it.
"""

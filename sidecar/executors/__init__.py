"""Executors: run one evaluation (locally, or as a Slurm job) behind one protocol."""

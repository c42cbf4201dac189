"""Fleet mode: one sidecar for a whole tree of models, each with its own eval profile."""

"""eval sidecar: evaluate every checkpoint once, remember it, report it."""

__version__ = "0.1.0"

"""Reporters: deliver state rows somewhere (W&B, or nowhere) behind one protocol."""

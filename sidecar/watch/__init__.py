"""The watch pipeline: discover -> readiness -> plan -> evaluate -> judge -> state -> report."""

"""One error hierarchy; only the entry point turns these into exit codes and one line."""

from __future__ import annotations

from pathlib import Path

# Exit codes (documented in README.md "Exit codes").
EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_BAD_INPUT = 2
EXIT_LOCK_HELD = 3
EXIT_ONCE_FAILED = 4  # `once`: an evaluation failed in this run (the next run retries it)


class SidecarError(Exception):
    """Base class; `exit_code` is what the entry point returns for it."""

    exit_code = EXIT_RUNTIME


class ConfigError(SidecarError):
    """A flag, environment variable or config-file value is invalid; names the input and the value."""

    exit_code = EXIT_BAD_INPUT


class StateCorrupt(SidecarError):
    """The state file exists but is not a valid sidecar state; it is left untouched."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        bak = Path(f"{path}.bak")
        hint = f"; the previous good version is {bak}" if bak.exists() else ""
        super().__init__(
            f"state file {path} is not valid ({reason}); it was left untouched{hint} "
            f"(inspect it, then copy the .bak over it or move it away to start fresh)"
        )


class StateTooNew(StateCorrupt):
    """The state file was written by a newer release (a version this one cannot read); it is left untouched."""

    def __init__(self, path: Path, version: int, readable: tuple[int, ...]) -> None:
        self.path = path
        self.version = version
        reads = " and ".join(str(v) for v in readable)
        SidecarError.__init__(self, f"state file {path} was written by a newer eval sidecar (version {version}; "
                                    f"this one reads {reads}); nothing was changed")


class StateWriteError(SidecarError):
    """The state file could not be written (disk full, permissions); the previous state is intact."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        super().__init__(f"could not write state file {path}: {reason}; the previous state is intact")


class LockHeld(SidecarError):
    """Another sidecar holds this configuration's lock."""

    exit_code = EXIT_LOCK_HELD

    def __init__(self, path: Path, holder: str, hint: str = "") -> None:
        self.path = path
        self.holder = holder
        super().__init__(f"another sidecar ({holder}) holds {path}" + (f"; {hint}" if hint else ""))


class LockUnavailable(SidecarError):
    """The lock file cannot be created or written (a full disk, a read-only --state-dir)."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        super().__init__(f"cannot take the lock file {path}: {reason}; nothing was started")


class LockLost(LockHeld):
    """The lock file was removed or replaced under the running sidecar and could not be taken
    again (another process holds the new file): this sidecar must stop, writing nothing more."""

    def __init__(self, path: Path, what: str, holder: str, reason: str = "") -> None:
        self.path = path
        self.holder = holder
        why = f"another sidecar ({holder}) holds it now" if holder else f"it could not be taken again ({reason})"
        SidecarError.__init__(self, f"the lock file {path} was {what} while this sidecar ran and {why}; stopping, "
                                    f"so that one sidecar works on this configuration")


class MetricsError(SidecarError):
    """metrics.json is missing, unreadable or holds no usable metric."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"metrics.json at {path}: {reason}")

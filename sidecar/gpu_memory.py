"""Free GPU memory, as `nvidia-smi` reports it (`--gpu-free-memory-mb`).

On a node shared with training, an eval starts on a slot only when every GPU of the slot has at
least the asked MiB free. This module owns the outside thing, `nvidia-smi`: it runs it with a
timeout and parses its CSV; the decisions (`short_gpus`) are pure functions of a reading.

A reading that cannot be had (nvidia-smi not on PATH, exiting non-zero, hanging, printing what
is not `index, memory.free` lines) is a `GpuReadError` with one line saying why: the callers
treat it as "cannot tell" and wait, because the option exists to protect a training run that
shares the GPUs, and an eval started blind may take the memory that run needs.

GPU ids are nvidia-smi's `index` (PCI bus order). CUDA numbers the GPUs the same way only with
`CUDA_DEVICE_ORDER=PCI_BUS_ID` (its default puts the fastest first).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
COMMAND = "nvidia-smi"
QUERY = ("--query-gpu=index,memory.free", "--format=csv,noheader,nounits")
TIMEOUT_SECONDS = 10.0  # a wedged driver can make nvidia-smi hang


class GpuReadError(Exception):
    """The free memory cannot be read now; the message is one line saying why."""


def parse_free(text: str) -> dict[int, int]:
    """`"0, 1200\\n1, 30000\\n"` -> `{0: 1200, 1: 30000}`; raises GpuReadError naming the first
    line that is not `INDEX, MIB` (a MIG or unsupported GPU prints `[N/A]`)."""
    free: dict[int, int] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        match = re.fullmatch(r"\s*(\d+)\s*,\s*(\d+)\s*", line)
        if match is None:
            raise GpuReadError(f"{COMMAND} printed {line.strip()[:80]!r} (expected 'index, free MiB' lines)")
        free[int(match.group(1))] = int(match.group(2))
    if not free:
        raise GpuReadError(f"{COMMAND} listed no GPUs")
    return free


def read_free(timeout: float = TIMEOUT_SECONDS) -> dict[int, int]:
    """Ask nvidia-smi (found on PATH) for every GPU's free MiB, by index; raises GpuReadError."""
    path = shutil.which(COMMAND)
    if path is None:
        raise GpuReadError(f"{COMMAND} not found on PATH")
    try:  # its own process group: a timeout stops whatever it started too
        proc = subprocess.Popen([path, *QUERY], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                errors="replace", stdin=subprocess.DEVNULL, start_new_session=True)
    except OSError as exc:
        raise GpuReadError(f"{COMMAND} could not be run: {exc.strerror or exc}") from None
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop_group(proc)
        raise GpuReadError(f"{COMMAND} did not answer within {timeout:g} s") from None
    if proc.returncode != 0:
        said = next((line.strip() for line in (stderr + "\n" + stdout).splitlines() if line.strip()), "")
        raise GpuReadError(f"{COMMAND} exited {proc.returncode}" + (f": {said[:120]}" if said else ""))
    return parse_free(stdout)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGKILL the reader's process group; wait for it briefly only (a reader stuck in the driver,
    in uninterruptible sleep, is left to the kernel rather than hang the sidecar)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        proc.communicate(timeout=2)
    except subprocess.TimeoutExpired:
        pass


def slot_gpus(slot: str) -> tuple[int, ...]:
    """A slot's GPU ids (`"0 1"` or `"0,1"` -> `(0, 1)`); an empty slot names none."""
    return tuple(int(x) for x in re.split(r"[\s,]+", slot.strip()) if x.isdigit())


def short_gpus(slot: str, free: dict[int, int], need_mb: int) -> list[tuple[int, int | None]]:
    """The GPUs of `slot` with less than `need_mb` MiB free, as (id, free MiB; None when nvidia-smi
    does not list it); empty when the slot may start an eval. An empty slot (no `--cuda-list`)
    is checked against every GPU listed."""
    gpus = slot_gpus(slot) or tuple(sorted(free))
    return [(gpu, free.get(gpu)) for gpu in gpus if free.get(gpu) is None or free[gpu] < need_mb]


def short_text(short: list[tuple[int, int | None]]) -> str:
    """`GPU 0 has 1200 MiB free, GPU 3 is not listed by nvidia-smi` (for the log)."""
    return ", ".join(f"GPU {gpu} is not listed by {COMMAND}" if mb is None else f"GPU {gpu} has {mb} MiB free"
                     for gpu, mb in short)


_last: tuple[float, dict[int, int] | GpuReadError] | None = None  # read_free_cached's: (when, what)


def read_free_cached(max_age: float = 5.0, clock=time.monotonic) -> dict[int, int] | GpuReadError:
    """`read_free`, reused for `max_age` seconds within one process (`status --all` over many
    models asks once); the error when it cannot be read, rather than raising it."""
    global _last
    now = clock()
    if _last is None or now - _last[0] >= max_age:
        try:
            result: dict[int, int] | GpuReadError = read_free()
        except GpuReadError as exc:
            result = exc
        _last = (now, result)
    return _last[1]

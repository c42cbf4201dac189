"""Read SwanLab offline run files back with SwanLab's own record reader."""

from __future__ import annotations

from pathlib import Path


def scalars(run_dir: Path) -> list[tuple[str, int, float]]:
    """(key, step, value) of every scalar point in a run folder's .swanlab file, in log order. A
    file whose writer was killed ends at its last complete record."""
    from swanlab.proto.swanlab.record.v1 import record_pb2
    from swanlab.sdk.internal.core_python.store import DataStoreReader

    [path] = list(run_dir.glob("*.swanlab"))
    reader = DataStoreReader()
    out = []
    try:
        reader.open(str(path))
    except Exception:  # killed before its header reached the disk: no points
        return out
    record = record_pb2.Record()
    while True:
        try:
            data = reader.scan()
        except Exception:  # a torn last record
            break
        if data is None:
            break
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "scalar":
            # the fields themselves: a JSON view leaves out default values (step 0, value 0.0)
            s = record.scalar
            out.append((s.key, int(s.step), float(s.value.number)))
    reader.close()
    return out


def run_dirs(logdir: Path, exp_id: str | None = None) -> list[Path]:
    dirs = sorted(p for p in logdir.glob("run-*") if p.is_dir())
    return [d for d in dirs if exp_id is None or d.name.endswith(f"-{exp_id}")]

"""Read SwanLab offline run files back with SwanLab's own record reader."""

from __future__ import annotations

from pathlib import Path


def scalars(run_dir: Path) -> list[tuple[str, int, float]]:
    """(key, step, value) of every scalar point in a run folder's .swanlab file, in log order."""
    from google.protobuf.json_format import MessageToDict
    from swanlab.proto.swanlab.record.v1 import record_pb2
    from swanlab.sdk.internal.core_python.store import DataStoreReader

    [path] = list(run_dir.glob("*.swanlab"))
    reader = DataStoreReader()
    reader.open(str(path))
    out = []
    for data in reader:
        record = record_pb2.Record()
        record.ParseFromString(data)
        d = MessageToDict(record)
        if "scalar" in d:
            s = d["scalar"]
            # protobuf leaves out default values: step 0 has no "step" field
            out.append((s["key"], int(s.get("step", 0)), float(s["value"].get("number", float("nan")))))
    reader.close()
    return out


def run_dirs(logdir: Path, exp_id: str | None = None) -> list[Path]:
    dirs = sorted(p for p in logdir.glob("run-*") if p.is_dir())
    return [d for d in dirs if exp_id is None or d.name.endswith(f"-{exp_id}")]

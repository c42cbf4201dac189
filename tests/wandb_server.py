"""A recording stand-in for the W&B server, for tests and benchmarks (a fake of a cloud server).

Good enough for the real wandb SDK (0.31) online: `wandb.init(resume=...)`, `log`,
`define_metric`, summary, `wandb.Table`, `finish()`; for `wandb sync` of offline folders; and
for the one read the sidecar makes itself (a run's history line count). It answers the GraphQL
operations the SDK sends by name, the file stream (`POST /files/<entity>/<project>/<run>/file_stream`,
history lines at offsets, summary, exit code) and the uploads to the URLs it hands out.

It binds 127.0.0.1 only, can go down and come back on the same port with the same stored runs
(`stop()` / `start()`), and answers 5xx on demand (`fail_with`). What it received is in
`runs[(entity, project, run_id)]`: history lines in offset order (with their arrival times),
the merged summary, config, exit code, and uploaded files by name.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ENTITY = "tester"
_OPERATION = re.compile(r"\b(query|mutation)\s+(\w+)")


@dataclass
class StoredRun:
    entity: str
    project: str
    name: str
    storage_id: str
    config: dict = field(default_factory=dict)
    display_name: str | None = None
    job_type: str | None = None
    history: list[str] = field(default_factory=list)  # JSON lines, index = offset
    arrived: list[float] = field(default_factory=list)  # time.time() each history line arrived
    events: list[str] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    exit_code: int | None = None
    complete: bool = False
    files: dict[str, bytes] = field(default_factory=dict)  # uploaded run files by name
    upserts: int = 0

    def rows(self) -> list[dict]:
        """History lines as objects, in the order the server holds them."""
        return [json.loads(line) for line in self.history]

    def eval_rows(self) -> list[dict]:
        """The per-checkpoint rows (the table's history lines carry no eval/checkpoint_name)."""
        return [row for row in self.rows() if "eval/checkpoint_name" in row]

    def table(self) -> dict | None:
        """The newest logged eval/checkpoint_table, read from the file the SDK uploaded."""
        for row in reversed(self.rows()):
            ref = row.get("eval/checkpoint_table")
            if isinstance(ref, dict) and ref.get("path") in self.files:
                return json.loads(self.files[ref["path"]])
        return None


class WandbServer:
    """The stand-in server; `url` is its WANDB_BASE_URL. Use as a context manager or start/stop."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.runs: dict[tuple[str, str, str], StoredRun] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path or GraphQL operation name)
        self.alerts: list[dict] = []  # the variables of each run alert (title, text, severity, runName, ...)
        self.fail_with: int | None = None  # answer every request with this HTTP status (e.g. 503)
        self.fail_paths: tuple[str, ...] = ()  # ... or only requests whose path/operation contains one of these
        self.artifacts: dict[str, dict] = {}
        self.blobs: dict[str, bytes] = {}
        self._lock = threading.RLock()
        self._connections: set = set()  # open client sockets: going down closes them too (keep-alive)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._ids = 0

    # ----- life cycle ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "WandbServer":
        """Listen (again) on 127.0.0.1:port; stored runs are kept across stop/start."""
        handler = _handler_for(self)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="wandb-server-double", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Go down: the port is closed (connections are refused) and open connections are cut,
        until `start()`."""
        if self._httpd is not None:
            httpd, self._httpd = self._httpd, None
            httpd.shutdown()
            httpd.server_close()
            self._thread.join(5)
            with self._lock:
                connections, self._connections = list(self._connections), set()
            for conn in connections:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def __enter__(self) -> "WandbServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----- what tests read ------------------------------------------------------------------------
    def run(self, run_id: str, project: str | None = None) -> StoredRun:
        with self._lock:
            matches = [r for (e, p, n), r in self.runs.items() if n == run_id and (project is None or p == project)]
        assert len(matches) == 1, f"server holds {len(matches)} run(s) named {run_id}: {sorted(self.runs)}"
        return matches[0]

    def operations(self) -> list[str]:
        with self._lock:
            return [name for _, name in self.requests]

    # ----- the protocol ---------------------------------------------------------------------------
    def _new_id(self, prefix: str) -> str:
        self._ids += 1
        return base64.b64encode(f"{prefix}:{self._ids}".encode()).decode()

    def _find(self, entity: str | None, project: str | None, name: str) -> StoredRun | None:
        return self.runs.get((entity or ENTITY, project or "uncategorized", name))

    def graphql(self, body: dict) -> dict:
        query = body.get("query", "")
        variables = body.get("variables") or {}
        match = _OPERATION.search(query)
        name = body.get("operationName") or (match.group(2) if match else "anonymous")
        handler = getattr(self, f"_op_{name}", None)
        if handler is None:
            return {"data": None, "errors": [{"message": f"the W&B server double does not know {name}"}]}
        return {"data": handler(variables, query)}

    def _op_NotifyScriptableRunAlert(self, variables, query):
        with self._lock:
            self.alerts.append(dict(variables))
        return {"notifyScriptableRunAlert": {"success": True}}

    def _op_Viewer(self, variables, query):
        return {"viewer": {"id": "dXNlcjox", "entity": ENTITY, "username": ENTITY, "email": "t@example.invalid",
                           "flags": "{}", "admin": False, "teams": {"edges": []}}}

    def _op_ServerFeaturesQuery(self, variables, query):
        return {"serverInfo": {"features": []}}

    def _op_RunResumeStatus(self, variables, query):
        entity = variables.get("entity") or ENTITY
        project = variables.get("project") or "uncategorized"
        run = self._find(entity, project, variables["name"])
        bucket = None
        if run is not None:
            bucket = {
                "id": run.storage_id, "name": run.name, "displayName": run.display_name,
                "summaryMetrics": json.dumps(run.summary), "logLineCount": 0,
                "historyLineCount": len(run.history), "eventsLineCount": len(run.events),
                # a JSON array of JSON-encoded lines, as the real server sends it
                "historyTail": json.dumps(run.history[-10:]), "eventsTail": json.dumps(run.events[-10:]),
                "config": json.dumps(run.config), "tags": [], "notes": None,
                "wandbConfig": json.dumps({"t": run.config.get("_wandb", {}).get("value", {}).get("t", {1: []})}),
            }
        return {"model": {"id": self._new_id("Project"), "name": project,
                          "entity": {"id": "ZW50aXR5OjE=", "name": entity}, "bucket": bucket}}

    def _op_UpsertBucket(self, variables, query):
        entity = variables.get("entity") or ENTITY
        project = variables.get("project") or "uncategorized"
        name = variables.get("name") or variables.get("id") or self._new_id("run")[:8]
        key = (entity, project, name)
        inserted = key not in self.runs
        if inserted:
            self.runs[key] = StoredRun(entity, project, name, self._new_id("Run"))
        run = self.runs[key]
        run.upserts += 1
        if variables.get("config"):
            run.config.update(json.loads(variables["config"]))
        if variables.get("displayName"):
            run.display_name = variables["displayName"]
        if variables.get("jobType"):
            run.job_type = variables["jobType"]
        if variables.get("summaryMetrics"):
            run.summary.update(json.loads(variables["summaryMetrics"]))
        return {"upsertBucket": {"inserted": inserted, "bucket": {
            "id": run.storage_id, "name": run.name, "displayName": run.display_name, "description": None,
            "config": json.dumps(run.config), "sweepName": None, "historyLineCount": len(run.history),
            "project": {"id": self._new_id("Project"), "name": project,
                        "entity": {"id": "ZW50aXR5OjE=", "name": entity}}}}}

    def _upload_url(self, *parts: str) -> str:
        return f"{self.url}/upload/" + "/".join(parts)

    def _op_CreateRunFiles(self, variables, query):
        run = variables["run"]
        return {"createRunFiles": {"runID": run, "uploadHeaders": [], "files": [
            {"name": f, "uploadUrl": self._upload_url("run", variables["entity"], variables["project"], run, f)}
            for f in variables["files"]]}}

    def _op_ArtifactType(self, variables, query):
        return {"project": {"artifact": None}}  # no artifact of that name yet: any type is fine

    def _op_CreateArtifact(self, variables, query):
        artifact_id = self._new_id("Artifact")
        self.artifacts[artifact_id] = {"input": variables.get("input") or variables, "files": []}
        return {"createArtifact": {"artifact": {"id": artifact_id, "state": "PENDING",
                                                "artifactSequence": {"id": self._new_id("Seq"), "latestArtifact": None}}}}

    def _op_CreateArtifactManifest(self, variables, query):
        manifest_id = self._new_id("Manifest")
        return {"createArtifactManifest": {"artifactManifest": {"id": manifest_id, "file": {
            "id": self._new_id("File"), "uploadUrl": self._upload_url("blob", manifest_id), "uploadHeaders": []}}}}

    def _op_CreateArtifactFiles(self, variables, query):
        edges = []
        for spec in variables.get("artifactFiles", []):
            storage = f"{spec.get('artifactID')}/{spec.get('md5')}/{spec.get('name')}"
            edges.append({"node": {"storagePath": storage, "uploadUrl": self._upload_url("blob", storage),
                                   "uploadHeaders": [], "uploadMultipartUrls": None,
                                   "artifact": {"id": spec.get("artifactID")}}})
        return {"createArtifactFiles": {"files": {"edges": edges}}}

    def _op_CommitArtifact(self, variables, query):
        return {"commitArtifact": {"artifact": {"id": variables["artifactID"], "digest": "0" * 32}}}

    def _op_RunHistoryLineCount(self, variables, query):
        """The read the sidecar makes itself: `model/bucket { historyLineCount }`, as RunResumeStatus."""
        run = self._find(variables.get("entity"), variables.get("project"), variables["name"])
        return {"model": {"bucket": None if run is None else {"historyLineCount": len(run.history)}}}

    def file_stream(self, entity: str, project: str, name: str, body: dict) -> dict:
        run = self._find(entity, project, name)
        if run is None:
            run = self.runs.setdefault((entity, project, name), StoredRun(entity, project, name, self._new_id("Run")))
        now = time.time()
        for fname, chunk in (body.get("files") or {}).items():
            offset, content = int(chunk.get("offset", 0)), list(chunk.get("content", []))
            if fname == "wandb-history.jsonl":
                target = run.history
                del target[offset:offset + len(content)]  # a resent chunk replaces what it covers
                target[offset:offset] = content
                del run.arrived[offset:]
                run.arrived.extend([now] * (len(target) - len(run.arrived)))
            elif fname == "wandb-events.jsonl":
                run.events[offset:offset + len(content)] = content
            elif fname == "wandb-summary.json":
                for line in content:
                    run.summary = json.loads(line)
        if body.get("complete"):
            run.complete = True
            run.exit_code = body.get("exitcode")
        return {"exitcode": None, "limits": {}}

    def upload(self, path: str, data: bytes) -> None:
        parts = path.split("/", 5)  # '', 'upload', kind, ...
        if len(parts) > 2 and parts[2] == "run" and len(parts) == 6:
            entity, project, rest = parts[3], parts[4], parts[5]
            name, _, fname = rest.partition("/")
            run = self._find(entity, project, name)
            if run is not None:
                run.files[fname] = data
        else:
            self.blobs[path] = data

    def should_fail(self, what: str) -> int | None:
        if self.fail_with is None:
            return None
        if self.fail_paths and not any(p in what for p in self.fail_paths):
            return None
        return self.fail_with


def _handler_for(server: WandbServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            with server._lock:
                server._connections.add(self.connection)

        def finish(self) -> None:
            with server._lock:
                server._connections.discard(self.connection)
            super().finish()

        def log_message(self, *args) -> None:  # quiet
            return None

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                return self.rfile.read(length)
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                data = b""
                while True:
                    size = int(self.rfile.readline().strip() or b"0", 16)
                    if size == 0:
                        self.rfile.readline()
                        return data
                    data += self.rfile.read(size)
                    self.rfile.readline()
            return b""

        def _reply(self, status: int, payload: dict | bytes | None = None) -> None:
            data = payload if isinstance(payload, bytes) else json.dumps(payload or {}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self) -> None:
            raw = self._body()
            if server._httpd is None:  # went down while this request was on its way
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            path = self.path.split("?", 1)[0]
            what = path
            if path.rstrip("/").endswith("/graphql"):
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {}
                match = _OPERATION.search(body.get("query", "") if isinstance(body, dict) else "")
                what = (body.get("operationName") if isinstance(body, dict) else None) or (
                    match.group(2) if match else "graphql")
            with server._lock:
                server.requests.append((self.command, what))
                status = server.should_fail(what)
            if status is not None:
                self._reply(status, {"error": "the W&B server double was told to fail"})
                return
            with server._lock:
                if what != path:
                    self._reply(200, server.graphql(body))
                elif path.endswith("/file_stream") and path.startswith("/files/"):
                    _, _, entity, project, name, _ = path.split("/", 5)
                    self._reply(200, server.file_stream(entity, project, name, json.loads(raw or b"{}")))
                elif path.startswith("/upload/"):
                    server.upload(path, raw)
                    self._reply(200, b"")
                else:
                    self._reply(404, {"error": f"the W&B server double has nothing at {path}"})

        do_POST = do_PUT = do_GET = _handle

    return Handler


"""A local stand-in of the Lium HTTP API for driving the real ``lium`` CLI (PyPI ``lium-io`` 0.32.0).

Point the CLI at it with ``LIUM_BASE_URL=<api.url>`` and ``LIUM_API_KEY=<api.api_key>``. Covered, as the
CLI's source reads them (lium/sdk/client.py, lium/cli/up, ps and rm):

  GET    /version                      -> {"features": []}: no rent-by-spec, so ``up --gpu X`` lists nodes
  GET    /users/me                     -> an account with no ``workspace`` (no workspace line)
  GET    /machines, /executors         -> the GPU catalog and the nodes (``machine_names`` filter honoured)
  GET    /executors/default-docker-image -> [] (the CLI then falls back to GET /templates)
  GET    /executors/deployment-estimate  -> {} (no estimate shown)
  GET    /templates, /templates/{id}; POST /templates (``up --image`` makes a one-time template)
  GET    /ssh-keys; POST /ssh-keys     (``up`` registers ``<ssh key>.pub`` once per API key and HOME)
  GET    /volumes; POST /volumes       (``up --volume id:<HUID>`` / ``new:name=...``)
  POST   /executors/{id}/rent          -> {"success": true, "pod_id": ...}; the pod is PENDING
  GET    /pods, /pods/{id}, /pods/{id}/events
  DELETE /pods/{id}                    -> {"success": true}, 404 for an unknown id
  POST   /pods/{id}/schedule-removal   (``up --ttl/--until/--budget``); DELETE of it too

A rented pod stays PENDING for ``polls_to_running`` GET /pods listings that include it (``lium up`` itself
reads the list once right after the rent, then polls every 1 s), then turns ``final_status``: "RUNNING" with
``ssh_connect_cmd = "ssh root@127.0.0.1 -p <ssh_port>"``, or e.g. "FAILED" with ``failure_cause`` as its last
event. ``add_pod()`` seeds a pod directly. Every request lands in ``.requests`` (method, path, query, json,
api_key); ``errors[(METHOD, path)] = (status, body)`` answers one route with an error. A wrong or missing
X-API-KEY gets ``auth_status``: 401 is the CLI's ``invalid_api_key`` (exit 3), 403 its
``permission_denied`` (exit 6).

Left out: rent-by-spec, backups, jupyter, logs (``up --image`` without --json streams them), reboot,
clusters, billing/balance, workspaces/keys, and SSH itself (an SSH session or ``--verify-gpus`` needs a sshd).
"""

import hashlib
import json
import threading
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

_ADJ = ["swift", "brave", "calm", "eager", "gentle", "cosmic", "golden", "lunar", "zesty", "noble"]
_NOUN = ["hawk", "lion", "eagle", "fox", "wolf", "shark", "raven", "matrix", "comet", "orbit"]


def huid(id_str):
    """The name the CLI derives from an id (lium/sdk/utils.py generate_huid): ``lunar-fox-3a``."""
    d = hashlib.md5(id_str.encode()).hexdigest()
    return f"{_ADJ[int(d[:4], 16) % 10]}-{_NOUN[int(d[4:8], 16) % 10]}-{d[-2:]}"


def _now():
    return datetime.now(UTC).isoformat()


def executor(gpu="NVIDIA H100 80GB HBM3", count=1, price_per_gpu=2.5, ident=None, country="US"):
    """One node as GET /executors lists it (the fields ExecutorInfo reads)."""
    return {
        "id": ident or str(uuid.uuid4()), "machine_name": gpu,
        "gpu_count": count, "available_gpu_count": count,
        "price_per_gpu": price_per_gpu, "executor_ip_address": "127.0.0.1", "status": "AVAILABLE",
        "location": {"country": country, "country_code": country},
        "specs": {"gpu": {"count": count, "driver": "550.54", "details": [{"name": gpu}] * count},
                  "cpu": {"count": 32}, "available_port_count": 10},
    }


class LiumAPI:
    def __init__(self, api_key="test-key", polls_to_running=2, ssh_port=2222, final_status="RUNNING",
                 failure_cause="docker pull failed", executors=None, ssh_user="root"):
        self.ssh_user = ssh_user
        self.api_key = api_key  # None: any key (or none) is accepted
        self.auth_status = 401  # 401 -> CLI code invalid_api_key (exit 3); 403 -> permission_denied (exit 6)
        self.polls_to_running, self.ssh_port = polls_to_running, ssh_port
        self.final_status, self.failure_cause = final_status, failure_cause
        self.executors = executors if executors is not None else [executor()]
        self.templates = [{"id": str(uuid.uuid4()), "name": "Pytorch (Cuda) 2.4",
                           "docker_image": "daturaai/pytorch", "docker_image_tag": "2.4.0-py3.11-cuda12.2",
                           "category": "PYTORCH", "status": "VERIFY_SUCCESS"}]
        self.pods, self.ssh_keys, self.volumes, self.requests, self.errors = {}, [], [], [], {}
        self.lock = threading.Lock()
        self._server = None

    # -- lifecycle --------------------------------------------------------------------------------
    def __enter__(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode("latin-1")
                parts = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                status, payload = api.handle(self.command, parts.path.rstrip("/") or "/", query, body,
                                             self.headers.get("X-API-KEY"))
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self):
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- helpers for tests ------------------------------------------------------------------------
    def add_pod(self, status="RUNNING", name=None, executor_index=0, **fields):
        """Put a pod in the account directly (for ps/rm tests); returns its /pods row."""
        ex = self.executors[executor_index]
        pod_id = str(uuid.uuid4())
        ssh = f"ssh {self.ssh_user}@127.0.0.1 -p {self.ssh_port}" if status == "RUNNING" else None
        pod = {"id": pod_id, "pod_name": name or huid(ex["id"]), "status": status, "ssh_connect_cmd": ssh,
               "ports_mapping": {"22": self.ssh_port}, "created_at": _now(), "updated_at": _now(),
               "executor": ex, "template": self.templates[0], "gpu_count": ex["available_gpu_count"],
               "price": ex["price_per_gpu"] * ex["available_gpu_count"], "removal_scheduled_at": None,
               "_polls": 0, "_events": []}
        pod.update(fields)
        with self.lock:
            self.pods[pod_id] = pod
        return self._row(pod)

    def calls(self, method, path=None):
        return [r for r in self.requests if r["method"] == method and (path is None or r["path"] == path)]

    @staticmethod
    def _row(pod):
        return {k: v for k, v in pod.items() if not k.startswith("_")}

    def _advance(self, pod):
        if pod["status"] != "PENDING" or "_polls" not in pod:
            return
        pod["_polls"] += 1
        if pod["_polls"] > self.polls_to_running:
            pod["status"], pod["updated_at"] = self.final_status, _now()
            if self.final_status == "RUNNING":
                pod["ssh_connect_cmd"] = f"ssh {self.ssh_user}@127.0.0.1 -p {self.ssh_port}"
            elif self.failure_cause:
                pod["_events"].append({"type": "creation_failed", "error": self.failure_cause, "at": _now()})

    # -- routing ----------------------------------------------------------------------------------
    def handle(self, method, path, query, body, key):
        with self.lock:
            self.requests.append({"method": method, "path": path, "query": query, "json": body,
                                  "api_key": key})
            if self.api_key is not None and key != self.api_key:
                return self.auth_status, {"detail": "Invalid API key"}
            if (method, path) in self.errors:
                return self.errors[(method, path)]
            return self._route(method, path.split("/")[1:], query, body)

    def _route(self, method, seg, query, body):
        notfound = (404, {"detail": "Not found"})
        if method == "GET" and seg == ["version"]:
            return 200, {"version": "lium-api-standin", "features": []}
        if method == "GET" and seg == ["users", "me"]:
            return 200, {"id": "user-1", "email": "test@example.com", "balance": 100.0}
        if method == "GET" and seg == ["machines"]:
            return 200, [{"name": n} for n in sorted({e["machine_name"] for e in self.executors})]
        if seg[:1] == ["executors"]:
            if method == "GET" and len(seg) == 1:
                names = [n for n in query.get("machine_names", "").split(",") if n]
                return 200, [e for e in self.executors
                             if not names or any(n.lower() in e["machine_name"].lower() for n in names)]
            if method == "GET" and seg[1:] == ["default-docker-image"]:
                return 200, []
            if method == "GET" and seg[1:] == ["deployment-estimate"]:
                return 200, {}
            if method == "POST" and len(seg) == 3 and seg[2] == "rent":
                return self._rent(seg[1], body or {})
        if seg[:1] == ["templates"]:
            if method == "GET" and len(seg) == 1:
                return 200, self.templates
            if method == "GET" and len(seg) == 2:
                return next(((200, t) for t in self.templates if t["id"] == seg[1]), notfound)
            if method == "POST" and len(seg) == 1:
                template = {**(body or {}), "id": str(uuid.uuid4()), "status": "CREATED"}
                self.templates.append(template)
                return 200, template
        if seg == ["ssh-keys"]:
            if method == "GET":
                return 200, self.ssh_keys
            if method == "POST":
                self.ssh_keys.append({"id": str(uuid.uuid4()), "created_at": _now(), **(body or {})})
                return 200, self.ssh_keys[-1]
        if seg == ["volumes"]:
            if method == "POST":
                self.volumes.append({"id": str(uuid.uuid4()), "created_at": _now(), **(body or {})})
                return 200, self.volumes[-1]
            return 200, self.volumes
        if seg[:1] == ["pods"]:
            if method == "GET" and len(seg) == 1:
                for pod in self.pods.values():
                    self._advance(pod)
                return 200, [self._row(p) for p in self.pods.values()]
            pod = self.pods.get(seg[1]) if len(seg) > 1 else None
            if len(seg) == 3 and seg[2] == "events":
                return (200, pod["_events"]) if pod else notfound
            if pod is None:
                return notfound
            if len(seg) == 2 and method == "GET":
                return 200, {**self._row(pod), "last_event": (pod["_events"] or [None])[-1]}
            if len(seg) == 2 and method == "DELETE":
                del self.pods[pod["id"]]
                return 200, {"success": True, "message": "Pod removed"}
            if len(seg) == 3 and seg[2] == "schedule-removal":
                when = (body or {}).get("removal_scheduled_at") if method == "POST" else None
                pod["removal_scheduled_at"] = when
                return 200, {"success": True, "removal_scheduled_at": pod["removal_scheduled_at"]}
        return notfound

    def _rent(self, executor_id, body):
        ex = next((e for e in self.executors if e["id"] == executor_id), None)
        if ex is None:
            return 404, {"detail": f"Executor {executor_id} not found"}
        count = body.get("gpu_count") or ex["available_gpu_count"]
        template = next((t for t in self.templates if t["id"] == body.get("template_id")), {})
        pod_id = str(uuid.uuid4())
        self.pods[pod_id] = {
            "id": pod_id, "pod_name": body.get("pod_name") or huid(ex["id"]), "status": "PENDING",
            "ssh_connect_cmd": None, "ports_mapping": {"22": self.ssh_port}, "created_at": _now(),
            "updated_at": _now(), "executor": ex, "template": template, "gpu_count": count,
            "price": ex["price_per_gpu"] * count, "removal_scheduled_at": None, "_polls": 0, "_events": [],
        }
        return 200, {"success": True, "pod_id": pod_id}

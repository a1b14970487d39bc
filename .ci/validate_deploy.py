"""Offline checks of the deployment files, run by .ci/validate-deploy.sh.

    python validate_deploy.py compose RESOLVED_CONFIG_YAML
    python validate_deploy.py dockerfile docker/Dockerfile
    python validate_deploy.py fluent-bit docker/k8s/fluent-bit.yaml FIXTURE_JSONL
    python validate_deploy.py fixture FIXTURE_JSONL
    python validate_deploy.py grafana docker/grafana RESOLVED_CONFIG_YAML

Each prints what it checked and exits non-zero on the first failure.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml

MESSAGE_STRING_FIELDS = ("service", "podName", "namespace", "nodeName")
MESSAGE_FIELDS = ("timestamp",) + MESSAGE_STRING_FIELDS + ("cpu", "memory")
# What the Kafka output adds to every record (Timestamp_Key).
KAFKA_TIMESTAMP_KEY = "@timestamp"
METRIC_LINE = re.compile(
    r"^\[METRIC\] service=\S+ pod=\S+ cpu=\d{1,3}\.\d{2} memory=\d+\.\d{2}$"
)


class CheckFailed(Exception):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def ok(message: str) -> None:
    print(f"  ok   {message}")


# --------------------------------------------------------------------------- compose


def check_compose(resolved_path: str) -> None:
    with open(resolved_path, encoding="utf-8") as f:
        config = yaml.safe_load(f)
    services = config.get("services", {})
    for name in ("kafka", "kafka-init", "timescaledb", "panopticon", "simulator"):
        check(name in services, f"compose: service {name} missing")
    ok("services kafka, kafka-init, timescaledb, panopticon, simulator")

    kafka = services["kafka"]
    check(kafka.get("container_name") == "panopticon-kafka",
          "compose: kafka container_name must be panopticon-kafka (the guide's docker exec)")
    check(str(kafka.get("image", "")).startswith("apache/kafka:"), "compose: kafka image")
    env = kafka.get("environment", {})
    check("PLAINTEXT://localhost:9092" in env.get("KAFKA_ADVERTISED_LISTENERS", ""),
          "compose: kafka must advertise PLAINTEXT://localhost:9092")
    check("INTERNAL://kafka:29092" in env.get("KAFKA_ADVERTISED_LISTENERS", ""),
          "compose: kafka must advertise INTERNAL://kafka:29092")
    check(any(published_port(p) == 9092 for p in kafka.get("ports", [])),
          "compose: kafka must publish 9092")
    ok("kafka: container panopticon-kafka, localhost:9092 and kafka:29092 listeners")

    init_cmd = " ".join(as_list(services["kafka-init"].get("command")))
    for needle in ("metrics.system", "metrics.system.dlq", "--if-not-exists", "--partitions 3"):
        check(needle in init_cmd, f"compose: kafka-init command lacks {needle!r}")
    ok("kafka-init: creates metrics.system (3 partitions) and metrics.system.dlq idempotently")

    tsdb = services["timescaledb"]
    check(tsdb.get("container_name") == "timescaledb", "compose: timescaledb container_name")
    check(any(published_port(p) == 5433 and target_port(p) == 5432 for p in tsdb.get("ports", [])),
          "compose: timescaledb must publish 5433 -> 5432")
    tenv = tsdb.get("environment", {})
    check((tenv.get("POSTGRES_USER"), tenv.get("POSTGRES_PASSWORD"), tenv.get("POSTGRES_DB"))
          == ("admin", "admin123", "panopticon"), "compose: timescaledb credentials")
    check("healthcheck" in tsdb, "compose: timescaledb healthcheck")
    ok("timescaledb: localhost:5433, admin/admin123, database panopticon, healthcheck")

    app = services["panopticon"]
    build = app.get("build", {})
    check(str(build.get("dockerfile", "")).endswith("docker/Dockerfile"),
          "compose: panopticon builds docker/Dockerfile")
    check(any(published_port(p) == 3001 for p in app.get("ports", [])),
          "compose: panopticon publishes 3001")
    aenv = app.get("environment", {})
    check(aenv.get("KAFKA_BROKERS") == "kafka:29092", "compose: panopticon KAFKA_BROKERS")
    check("@timescaledb:5432/" in aenv.get("DATABASE_URL", ""), "compose: panopticon DATABASE_URL")
    deps = app.get("depends_on", {})
    check(isinstance(deps, dict)
          and deps.get("kafka", {}).get("condition") == "service_healthy"
          and deps.get("timescaledb", {}).get("condition") == "service_healthy"
          and deps.get("kafka-init", {}).get("condition") == "service_completed_successfully",
          "compose: panopticon depends_on conditions")
    check("healthcheck" in app, "compose: panopticon healthcheck")
    ok("panopticon: built from docker/Dockerfile, port 3001, internal listener, depends_on conditions")

    sim = as_list(services["simulator"].get("command"))
    check(sim[:1] == ["simulate"] and "--brokers" in sim and "--topic" in sim,
          "compose: simulator runs `panopticon simulate --brokers ... --topic ...`")
    ok("simulator: panopticon simulate against kafka:29092")


def as_list(command) -> list[str]:
    if command is None:
        return []
    if isinstance(command, str):
        return command.split()
    return [str(c) for c in command]


def published_port(port) -> int | None:
    if isinstance(port, dict):
        return int(port["published"]) if port.get("published") is not None else None
    parts = str(port).split(":")
    return int(parts[-2]) if len(parts) >= 2 else None


def target_port(port) -> int | None:
    if isinstance(port, dict):
        return int(port["target"])
    return int(str(port).split(":")[-1].split("/")[0])


# --------------------------------------------------------------------------- Grafana

GRAFANA_IMAGE = "grafana/grafana:11.3.0"
PROMETHEUS_URL = "http://panopticon:3001/prometheus"


def mounts(service: dict) -> dict[str, str]:
    """The service's bind mounts, container path -> host path (as resolved by Compose)."""
    out = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            out[str(volume.get("target"))] = str(volume.get("source", ""))
        else:
            parts = str(volume).split(":")
            if len(parts) >= 2:
                out[parts[1]] = parts[0]
    return out


def check_grafana(grafana_dir: str, resolved_path: str) -> None:
    with open(resolved_path, encoding="utf-8") as f:
        services = yaml.safe_load(f).get("services", {})
    check("grafana" in services, "compose: service grafana missing")
    grafana = services["grafana"]
    check(grafana.get("image") == GRAFANA_IMAGE, f"compose: grafana image must be {GRAFANA_IMAGE}")
    check(any(published_port(p) == 3000 for p in grafana.get("ports", [])),
          "compose: grafana publishes 3000")
    deps = grafana.get("depends_on", {})
    check(isinstance(deps, dict) and "panopticon" in deps, "compose: grafana depends on panopticon")
    bound = mounts(grafana)
    check(bound.get("/etc/grafana/provisioning", "").rstrip("/").endswith("grafana/provisioning"),
          "compose: grafana must mount docker/grafana/provisioning at /etc/grafana/provisioning")
    ok(f"compose: grafana {GRAFANA_IMAGE}, port 3000, provisioning mounted")

    sources_dir = os.path.join(grafana_dir, "provisioning", "datasources")
    uids = set()
    for name in sorted(os.listdir(sources_dir)):
        with open(os.path.join(sources_dir, name), encoding="utf-8") as f:
            doc = yaml.safe_load(f)
        check(isinstance(doc, dict) and doc.get("apiVersion") == 1, f"{name}: apiVersion 1")
        for source in doc.get("datasources", []):
            check(source.get("type") == "prometheus", f"{name}: data source type prometheus")
            check(source.get("url") == PROMETHEUS_URL, f"{name}: data source url must be {PROMETHEUS_URL}")
            check(bool(source.get("uid")), f"{name}: the data source needs a uid for the dashboards")
            uids.add(source["uid"])
    check(len(uids) == 1, f"datasources: exactly one provisioned data source, found {sorted(uids)}")
    uid = next(iter(uids))
    ok(f"data source {uid}: prometheus at {PROMETHEUS_URL}")

    providers_dir = os.path.join(grafana_dir, "provisioning", "dashboards")
    paths = []
    for name in sorted(os.listdir(providers_dir)):
        with open(os.path.join(providers_dir, name), encoding="utf-8") as f:
            doc = yaml.safe_load(f)
        check(isinstance(doc, dict) and doc.get("apiVersion") == 1, f"{name}: apiVersion 1")
        for provider in doc.get("providers", []):
            check(provider.get("type") == "file", f"{name}: file provider")
            paths.append(provider.get("options", {}).get("path"))
    check(paths, "dashboards: no provider")
    for path in paths:
        check(bound.get(path, "").rstrip("/").endswith("grafana/dashboards"),
              f"compose: grafana must mount docker/grafana/dashboards at the provider path {path}")
    ok(f"dashboard provider reads {', '.join(paths)}, mounted from docker/grafana/dashboards")

    dashboards_dir = os.path.join(grafana_dir, "dashboards")
    names = sorted(n for n in os.listdir(dashboards_dir) if n.endswith(".json"))
    check(names, "dashboards: no dashboard JSON")
    for name in names:
        with open(os.path.join(dashboards_dir, name), encoding="utf-8") as f:
            try:
                dashboard = json.load(f)
            except json.JSONDecodeError as e:
                raise CheckFailed(f"{name}: not JSON: {e}")
        check(bool(dashboard.get("uid")) and bool(dashboard.get("title")), f"{name}: uid and title")
        panels = dashboard.get("panels", [])
        check(panels, f"{name}: no panels")
        exprs = 0
        for panel in panels:
            where = f"{name}: panel {panel.get('title')!r}"
            check(panel.get("datasource", {}).get("uid") == uid, f"{where}: data source uid must be {uid}")
            for target in panel.get("targets", []):
                check(target.get("datasource", {}).get("uid") == uid,
                      f"{where}: target data source uid must be {uid}")
                check(bool(str(target.get("expr", "")).strip()), f"{where}: target without expr")
                exprs += 1
        for variable in dashboard.get("templating", {}).get("list", []):
            if variable.get("type") == "query":
                check(variable.get("datasource", {}).get("uid") == uid,
                      f"{name}: variable {variable.get('name')}: data source uid must be {uid}")
        ok(f"{name}: {len(panels)} panels, {exprs} queries, all on data source {uid}")


# --------------------------------------------------------------------------- Dockerfile


def check_dockerfile(path: str) -> None:
    import dockerfile  # BuildKit's own parser, compiled into the wheel

    try:
        commands = dockerfile.parse_file(path)
    except dockerfile.GoParseError as e:
        raise CheckFailed(f"Dockerfile does not parse: {e}") from e
    ok(f"{path} parses ({len(commands)} instructions)")

    froms = [c.value for c in commands if c.cmd == "FROM"]
    check(len(froms) >= 2, "Dockerfile: multi-stage build expected")
    check(froms[0][0].startswith("rust:") and froms[-1][0].startswith("debian:"),
          "Dockerfile: rust builder and debian runtime stages")
    last_from = max(i for i, c in enumerate(commands) if c.cmd == "FROM")
    runtime = commands[last_from:]
    users = [c.value[0] for c in runtime if c.cmd == "USER"]
    check(users and users[-1].split(":")[0] not in ("root", "0"), "Dockerfile: runtime USER non-root")
    check(any(c.cmd == "EXPOSE" and "3001" in c.value for c in runtime), "Dockerfile: EXPOSE 3001")
    health = [c for c in runtime if c.cmd == "HEALTHCHECK"]
    check(health and "/health" in " ".join(health[-1].value), "Dockerfile: HEALTHCHECK on /health")
    entry = [c.value for c in runtime if c.cmd == "ENTRYPOINT"]
    check(entry and entry[-1][0].endswith("/panopticon"), "Dockerfile: ENTRYPOINT panopticon")
    ok("multi-stage rust -> debian, non-root USER, EXPOSE 3001, HEALTHCHECK /health, ENTRYPOINT")

    ignore = os.path.join(os.path.dirname(path), os.path.basename(path) + ".dockerignore")
    check(os.path.isfile(ignore), f"{ignore} missing")
    with open(ignore, encoding="utf-8") as f:
        patterns = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    check(any(p.rstrip("/") in ("target", "/target") for p in patterns), f"{ignore}: target/ not excluded")
    ok(f"{ignore} excludes target/")


# --------------------------------------------------------------------------- Fluent Bit


def load_fluent_bit(manifest: str) -> tuple[dict, dict]:
    with open(manifest, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    configmaps = [d for d in docs if d["kind"] == "ConfigMap"]
    daemonsets = [d for d in docs if d["kind"] == "DaemonSet"]
    check(len(configmaps) == 1 and len(daemonsets) == 1, "fluent-bit.yaml: one ConfigMap and one DaemonSet")
    return configmaps[0], daemonsets[0]


def parse_classic_config(text: str) -> list[tuple[str, dict[str, str]]]:
    """Fluent Bit's classic format: [SECTION] headers, then indented `Key Value` lines."""
    sections: list[tuple[str, dict[str, str]]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        header = re.fullmatch(r"\[([A-Z_]+)\]", line)
        if header:
            sections.append((header.group(1), {}))
            continue
        check(bool(sections), f"fluent-bit.conf:{number}: entry before any section")
        check(raw[:1] in (" ", "\t"), f"fluent-bit.conf:{number}: entries must be indented")
        parts = line.split(None, 1)
        check(len(parts) == 2, f"fluent-bit.conf:{number}: `Key Value` expected, got {line!r}")
        key = parts[0].lower()
        check(key not in sections[-1][1], f"fluent-bit.conf:{number}: duplicate key {parts[0]}")
        sections[-1][1][key] = parts[1]
    return sections


def tag_matches(pattern: str, tag: str) -> bool:
    return re.fullmatch(re.escape(pattern).replace(r"\*", ".*"), tag) is not None


def check_fluent_bit_config(configmap: dict, daemonset: dict) -> None:
    data = configmap["data"]
    for key in ("fluent-bit.conf", "pod-metrics.lua", "pod-metrics.sh"):
        check(key in data, f"ConfigMap lacks {key}")
    sections = parse_classic_config(data["fluent-bit.conf"])
    names = [s for s, _ in sections]
    check(set(names) <= {"SERVICE", "INPUT", "FILTER", "OUTPUT", "PARSER", "MULTILINE_PARSER"},
          f"fluent-bit.conf: unknown section in {names}")
    inputs = [kv for s, kv in sections if s == "INPUT"]
    filters = [kv for s, kv in sections if s == "FILTER"]
    outputs = [kv for s, kv in sections if s == "OUTPUT"]
    for kv in inputs + filters + outputs:
        check("name" in kv, "fluent-bit.conf: every plugin section needs Name")

    http_in = [kv for kv in inputs if kv["name"] == "http"]
    check(len(http_in) == 1, "fluent-bit.conf: one http input")
    tag = http_in[0].get("tag", "")
    check(tag != "", "fluent-bit.conf: the http input needs a Tag")
    endpoint = f"http://{http_in[0].get('listen')}:{http_in[0].get('port')}/"

    lua = [kv for kv in filters if kv["name"] == "lua"]
    check(len(lua) == 1 and tag_matches(lua[0].get("match", ""), tag), "fluent-bit.conf: lua filter on the input's tag")
    script = lua[0].get("script", "")
    check(script.startswith("/fluent-bit/etc/") and os.path.basename(script) in data,
          f"fluent-bit.conf: Script {script} must be a key of the ConfigMap mounted at /fluent-bit/etc")
    call = lua[0].get("call", "")
    check(re.search(rf"^function {re.escape(call)}\(tag, ts, record\)", data[os.path.basename(script)], re.M)
          is not None, f"pod-metrics.lua does not define {call}(tag, ts, record)")

    kafka = [kv for kv in outputs if kv["name"] == "kafka"]
    check(len(kafka) == 1 and tag_matches(kafka[0].get("match", ""), tag), "fluent-bit.conf: kafka output on the input's tag")
    k = kafka[0]
    check(k.get("format") == "json", "kafka output: Format json")
    check(k.get("timestamp_key") == KAFKA_TIMESTAMP_KEY, f"kafka output: Timestamp_Key {KAFKA_TIMESTAMP_KEY}")
    check(k.get("timestamp_format", "double") == "double", "kafka output: Timestamp_Format double")
    check(k.get("brokers") and k.get("topics"), "kafka output: Brokers and Topics")
    ok("fluent-bit.conf: http input -> lua filter -> kafka output (json, @timestamp), keys well formed")

    pod = daemonset["spec"]["template"]
    check(pod["metadata"]["labels"].get("app") == "fluent-bit", "DaemonSet pods labelled app=fluent-bit")
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    check({"fluent-bit", "pod-metrics"} <= set(containers), "DaemonSet containers fluent-bit and pod-metrics")
    fb_env = {e["name"]: e.get("value") for e in containers["fluent-bit"].get("env", [])}
    check(fb_env.get("KAFKA_TOPIC") == "metrics.system", "fluent-bit env KAFKA_TOPIC=metrics.system")
    for var in re.findall(r"\$\{(\w+)\}", data["fluent-bit.conf"]):
        check(var in fb_env, f"fluent-bit.conf uses ${{{var}}} but the container does not set it")
    mounts = {m["mountPath"]: m["name"] for m in containers["fluent-bit"]["volumeMounts"]}
    check("/fluent-bit/etc" in mounts, "fluent-bit container mounts the ConfigMap at /fluent-bit/etc")
    sidecar = containers["pod-metrics"]
    side_mounts = {m["mountPath"] for m in sidecar["volumeMounts"]}
    script_path = sidecar["command"][-1]
    check(os.path.dirname(script_path) in side_mounts and os.path.basename(script_path) in data,
          "pod-metrics runs the ConfigMap's pod-metrics.sh")
    side_env = {e["name"]: e.get("value") for e in sidecar.get("env", [])}
    check(side_env.get("FLUENT_BIT_URL") == endpoint, f"pod-metrics posts to the http input at {endpoint}")
    check(side_env.get("INTERVAL_SECONDS") == "30", "pod-metrics samples every 30 s")
    ok("DaemonSet: app=fluent-bit, config mounted, sidecar posts to the http input every 30 s")


# Kubelet answers of one kind node, shaped like /pods and /stats/summary.
NODE = "kind-control-plane"
NODE_CORES = 4


def fake_pod(namespace, name, labels=None, owner=None):
    metadata = {"name": name, "namespace": namespace, "uid": f"uid-{name}", "labels": labels or {}}
    if owner:
        metadata["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": owner[0], "name": owner[1],
                                        "uid": f"uid-{owner[1]}", "controller": True}]
    return {"metadata": metadata, "spec": {"nodeName": NODE}, "status": {"phase": "Running"}}


def fake_stats(namespace, name, nanocores, working_set):
    stats = {"podRef": {"name": name, "namespace": namespace, "uid": f"uid-{name}"},
             "startTime": "2025-11-04T12:00:00Z", "containers": []}
    if nanocores is not None:
        stats["cpu"] = {"time": "2025-11-04T12:34:29Z", "usageNanoCores": nanocores,
                        "usageCoreNanoSeconds": 912345678901}
        stats["memory"] = {"time": "2025-11-04T12:34:29Z", "workingSetBytes": working_set,
                           "usageBytes": working_set + 4096, "rssBytes": working_set // 2}
    return stats


PODS = {
    "kind": "PodList",
    "apiVersion": "v1",
    "metadata": {},
    "items": [
        fake_pod("default", "log-generator-7d9f8b6c5-x2x9z",
                 {"app": "log-generator", "pod-template-hash": "7d9f8b6c5"},
                 ("ReplicaSet", "log-generator-7d9f8b6c5")),
        fake_pod("default", "log-generator-7d9f8b6c5-q8m4n",
                 {"app": "log-generator", "pod-template-hash": "7d9f8b6c5"},
                 ("ReplicaSet", "log-generator-7d9f8b6c5")),
        fake_pod("logging", "fluent-bit-7xk2p", {"app": "fluent-bit"}, ("DaemonSet", "fluent-bit")),
        fake_pod("kube-system", "coredns-7db6d8ff4d-5xq9w",
                 {"k8s-app": "kube-dns", "pod-template-hash": "7db6d8ff4d"},
                 ("ReplicaSet", "coredns-7db6d8ff4d")),
        fake_pod("kube-system", "kube-apiserver-kind-control-plane",
                 {"component": "kube-apiserver", "tier": "control-plane"}, ("Node", NODE)),
        fake_pod("panopticon", "panopticon-5f6d7c8b9d-k7w2r",
                 {"pod-template-hash": "5f6d7c8b9d"}, ("ReplicaSet", "panopticon-5f6d7c8b9d")),
        fake_pod("default", "debug-shell", {}),
        fake_pod("default", "log-generator-7d9f8b6c5-zz9rt",
                 {"app": "log-generator", "pod-template-hash": "7d9f8b6c5"},
                 ("ReplicaSet", "log-generator-7d9f8b6c5")),
    ],
}

SUMMARY = {
    "node": {"nodeName": NODE, "cpu": {"usageNanoCores": 612345678}, "memory": {"workingSetBytes": 2147483648}},
    "pods": [
        fake_stats("default", "log-generator-7d9f8b6c5-x2x9z", 130000000, 50462720),
        fake_stats("default", "log-generator-7d9f8b6c5-q8m4n", 161234567, 53309440),
        fake_stats("logging", "fluent-bit-7xk2p", 4021337, 19873792),
        fake_stats("kube-system", "coredns-7db6d8ff4d-5xq9w", 2512345, 14548992),
        fake_stats("kube-system", "kube-apiserver-kind-control-plane", 58123456, 283574272),
        fake_stats("panopticon", "panopticon-5f6d7c8b9d-k7w2r", 41234567, 23592960),
        fake_stats("default", "debug-shell", 0, 1310720),
        # Just started: the kubelet has no usage for it yet, so it is skipped.
        fake_stats("default", "log-generator-7d9f8b6c5-zz9rt", None, None),
    ],
}

TOKEN = "test-service-account-token"


class FakeKubelet(BaseHTTPRequestHandler):
    deny = False

    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.headers.get("Authorization") != f"Bearer {TOKEN}" or FakeKubelet.deny:
            self.send_error(403, "Forbidden")
            return
        body = {"/pods": PODS, "/stats/summary": SUMMARY}.get(self.path)
        if body is None:
            self.send_error(404)
            return
        payload = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


class FakeHttpInput(BaseHTTPRequestHandler):
    """Fluent Bit's http input: accepts a JSON body, answers 201."""

    bodies: list = []

    def do_POST(self):  # noqa: N802
        if self.headers.get("Content-Type") != "application/json":
            self.send_error(400, "invalid Content-Type")
            return
        length = int(self.headers.get("Content-Length", "0"))
        FakeHttpInput.bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def serve(handler) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def run_sampler(script: str) -> list[dict] | None:
    """Runs pod-metrics.sh once against a fake kubelet; returns the posted samples."""
    missing = [tool for tool in ("bash", "curl", "jq", "getconf") if shutil.which(tool) is None]
    if missing:
        print(f"  skip pod-metrics.sh run: {', '.join(missing)} not installed")
        return None
    syntax = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    check(syntax.returncode == 0, f"pod-metrics.sh: bash -n: {syntax.stderr.strip()}")
    ok("pod-metrics.sh: bash -n")

    kubelet, fluent_bit = serve(FakeKubelet), serve(FakeHttpInput)
    with tempfile.TemporaryDirectory() as tmp:
        script_path = os.path.join(tmp, "pod-metrics.sh")
        token_path = os.path.join(tmp, "token")
        with open(script_path, "w", encoding="utf-8") as f:
            f.write(script)
        with open(token_path, "w", encoding="utf-8") as f:
            f.write(TOKEN)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "TMPDIR": tmp,
            "NODE_NAME": NODE,
            "KUBELET_URL": f"http://127.0.0.1:{kubelet.server_port}",
            "TOKEN_FILE": token_path,
            "NODE_CPU_CORES": str(NODE_CORES),
            "FLUENT_BIT_URL": f"http://127.0.0.1:{fluent_bit.server_port}/",
            "ONESHOT": "true",
        }
        try:
            result = subprocess.run(["bash", script_path], env=env, capture_output=True, text=True, timeout=60)
            check(result.returncode == 0, f"pod-metrics.sh failed: {result.stderr.strip()}")
            check("Bearer" not in result.stderr, "pod-metrics.sh must not print the token")
            check(len(FakeHttpInput.bodies) == 1, "pod-metrics.sh must post one batch")
            ok(f"pod-metrics.sh: authenticated to the kubelet, posted one batch ({result.stderr.strip()})")

            FakeKubelet.deny = True
            denied = subprocess.run(["bash", script_path], env=env, capture_output=True, text=True, timeout=60)
            check(denied.returncode != 0 and len(FakeHttpInput.bodies) == 1,
                  "pod-metrics.sh must fail, and post nothing, when the kubelet refuses")
            ok("pod-metrics.sh: a refusing kubelet fails the sample and posts nothing")
        finally:
            FakeKubelet.deny = False
            kubelet.shutdown()
            fluent_bit.shutdown()
    batch = FakeHttpInput.bodies[0]
    check(isinstance(batch, list), "pod-metrics.sh posts a JSON array")
    return batch


def lua_runtime(script: str):
    """The filter script in LuaJIT, as Fluent Bit runs it, with io captured."""
    try:
        from lupa import luajit21 as lua_module
    except ImportError:  # a lupa without its LuaJIT build
        from lupa import lua51 as lua_module
    lua = lua_module.LuaRuntime(unpack_returned_tuples=True)
    lua.execute(
        """
        captured = { stdout = {}, stderr = {} }
        local function sink(name)
          return { write = function(self, s) table.insert(captured[name], s) end,
                   flush = function(self) end }
        end
        io = { stdout = sink("stdout"), stderr = sink("stderr") }
        """
    )
    lua.execute(script)
    return lua


def to_python(table) -> dict:
    """Fluent Bit's Lua-to-msgpack rule: integral numbers become integers."""
    record = {}
    for key, value in table.items():
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        record[key] = value
    return record


def apply_filter(lua, call: str, raw: dict, event_time: float) -> tuple[int, dict | None]:
    table = lua.table_from(raw)
    code, _, out = lua.globals()[call]("pod.metrics", event_time, table)
    return int(code), (to_python(out) if int(code) > 0 else None)


def check_fluent_bit(manifest: str, fixture: str) -> None:
    configmap, daemonset = load_fluent_bit(manifest)
    check_fluent_bit_config(configmap, daemonset)
    data = configmap["data"]
    call = re.search(r"^\s*Call\s+(\S+)", data["fluent-bit.conf"], re.M).group(1)

    raw = run_sampler(data["pod-metrics.sh"])
    if raw is None:
        raw = json.loads(json.dumps(SAMPLER_FALLBACK))
        print("  note using recorded sidecar output for the Lua checks")
    check(len(raw) == 7, f"pod-metrics.sh: expected 7 samples (one pod has no stats yet), got {len(raw)}")
    for sample in raw:
        check(isinstance(sample["timestamp"], int) and sample["nodeCpuCores"] == NODE_CORES
              and sample["nodeName"] == NODE, f"pod-metrics.sh: bad sample {sample}")
    services = {s["podName"]: s["service"] for s in raw}
    expected_services = {
        "log-generator-7d9f8b6c5-x2x9z": "log-generator",
        "fluent-bit-7xk2p": "fluent-bit",
        "coredns-7db6d8ff4d-5xq9w": "kube-dns",
        "kube-apiserver-kind-control-plane": "kube-apiserver",
        "panopticon-5f6d7c8b9d-k7w2r": "panopticon",
        "debug-shell": "debug-shell",
    }
    for pod, service in expected_services.items():
        check(services.get(pod) == service, f"service of {pod}: expected {service}, got {services.get(pod)}")
    ok("pod-metrics.sh: service from app / k8s-app / component label, owner name, else pod name")

    lua = lua_runtime(data["pod-metrics.lua"])
    with open(fixture, encoding="utf-8") as f:
        expected = [json.loads(line) for line in f if line.strip()]
    check(len(expected) == len(raw), f"{fixture}: {len(expected)} records, the pipeline emits {len(raw)}")
    for sample, want in zip(raw, expected):
        # The fixture's sample instant and event time stand for the pipeline's clock.
        sample = dict(sample, timestamp=want["timestamp"])
        code, got = apply_filter(lua, call, sample, want[KAFKA_TIMESTAMP_KEY])
        check(code == 2, f"lua filter returned {code} for {sample['podName']}")
        got = {KAFKA_TIMESTAMP_KEY: want[KAFKA_TIMESTAMP_KEY], **got}
        check(got == want and all(type(got[k]) is type(want[k]) for k in want),
              f"{fixture}: record differs from the pipeline's\n    fixture:  {want}\n    pipeline: {got}")
    ok(f"pod-metrics.lua turns the sidecar's samples into exactly the records of {os.path.basename(fixture)}")

    lines = "".join(lua.globals().captured.stdout.values()).splitlines()
    check(len(lines) == len(raw) and all(METRIC_LINE.match(line) for line in lines),
          f"pod-metrics.lua: one [METRIC] line per record expected, got {lines}")
    ok(f"pod-metrics.lua logs e.g. {lines[0]}")

    incomplete = dict(raw[0])
    del incomplete["cpuUsageNanoCores"]
    blank = dict(raw[0], podName="   ")
    for bad in (incomplete, blank):
        code, _ = apply_filter(lua, call, bad, 1762259670.5)
        check(code == -1, f"pod-metrics.lua must drop {bad}")
    busy = dict(raw[0], cpuUsageNanoCores=NODE_CORES * 10**9 + 12345)
    code, capped = apply_filter(lua, call, busy, 1762259670.5)
    check(code == 2 and capped["cpu"] == 100, "pod-metrics.lua caps cpu at 100")
    untimed = dict(raw[0])
    del untimed["timestamp"]
    code, stamped = apply_filter(lua, call, untimed, 1762259670.25)
    check(stamped["timestamp"] == 1762259670250, "pod-metrics.lua falls back to the event time")
    ok("pod-metrics.lua drops incomplete or blank samples, caps cpu at 100, falls back to the event time")

    check_fixture(fixture)


# What pod-metrics.sh posts for the fake kubelet above; used only where bash, curl or jq
# are missing, so that the Lua checks still run.
SAMPLER_FALLBACK = [
    {"timestamp": 0, "service": svc, "podName": pod, "namespace": ns, "nodeName": NODE,
     "cpuUsageNanoCores": s["cpu"]["usageNanoCores"], "memoryWorkingSetBytes": s["memory"]["workingSetBytes"],
     "nodeCpuCores": NODE_CORES}
    for (svc, pod, ns), s in zip(
        [("log-generator", "log-generator-7d9f8b6c5-x2x9z", "default"),
         ("log-generator", "log-generator-7d9f8b6c5-q8m4n", "default"),
         ("fluent-bit", "fluent-bit-7xk2p", "logging"),
         ("kube-dns", "coredns-7db6d8ff4d-5xq9w", "kube-system"),
         ("kube-apiserver", "kube-apiserver-kind-control-plane", "kube-system"),
         ("panopticon", "panopticon-5f6d7c8b9d-k7w2r", "panopticon"),
         ("debug-shell", "debug-shell", "default")],
        SUMMARY["pods"])
]


# --------------------------------------------------------------------------- message format


def check_fixture(fixture: str) -> None:
    """The message rules Panopticon validates, applied to every fixture record."""
    with open(fixture, encoding="utf-8") as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    check(len(lines) >= 3, f"{fixture}: at least 3 records expected")
    for number, line in enumerate(lines, 1):
        where = f"{fixture}:{number}"
        record = json.loads(line)
        check(isinstance(record, dict), f"{where}: not a JSON object")
        for field in MESSAGE_FIELDS:
            check(field in record, f"{where}: missing {field}")
        ts = record["timestamp"]
        check(type(ts) is int and 0 < ts < 4102444800000, f"{where}: timestamp must be integer Unix ms")
        for field in MESSAGE_STRING_FIELDS:
            value = record[field]
            check(isinstance(value, str) and value.strip() != "", f"{where}: {field} must be a non-empty string")
        for field, upper in (("cpu", 100), ("memory", math.inf)):
            value = record[field]
            check(type(value) in (int, float) and math.isfinite(value) and 0 <= value <= upper,
                  f"{where}: {field} out of range: {value!r}")
        stamp = record.get(KAFKA_TIMESTAMP_KEY)
        check(type(stamp) in (int, float) and abs(stamp * 1000 - ts) < 60_000,
              f"{where}: {KAFKA_TIMESTAMP_KEY} must be the event time in seconds")
        extra = set(record) - set(MESSAGE_FIELDS) - {KAFKA_TIMESTAMP_KEY}
        check(not extra, f"{where}: the pipeline leaves no other keys, found {sorted(extra)}")
    ok(f"{os.path.basename(fixture)}: {len(lines)} records valid per the metrics.system message format")


def main(argv: list[str]) -> int:
    commands = {
        "compose": (check_compose, 1),
        "dockerfile": (check_dockerfile, 1),
        "fluent-bit": (check_fluent_bit, 2),
        "fixture": (check_fixture, 1),
        "grafana": (check_grafana, 2),
    }
    if len(argv) < 2 or argv[1] not in commands or len(argv) - 2 != commands[argv[1]][1]:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        commands[argv[1]][0](*argv[2:])
    except CheckFailed as failure:
        print(f"  FAIL {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

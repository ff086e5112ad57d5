#!/usr/bin/env python3
"""Checks that the deployment files agree with the binary and with each other.

    python3 tests/deploy/check_consistency.py [--rendered NAME=FILE ...] [--dashboard-rules OUT]

Without --rendered, renders deploy/kubernetes/base and the production overlay
with deploy/render.py. What it checks, for every rendering:

- the Ingress serves exactly the specification's paths, each to its service;
- the five Deployments run `clairon serve --services <name>`, and their
  container ports, Service ports and probe paths are those the binary serves
  (defaults parsed from crates/clairon/src/config.rs, routes from crates/http);
- selectors: each workload's selector matches its pod labels; Services, PDBs,
  HPAs, NetworkPolicies and the topic Job point at things that exist;
- every CLAIRON_* variable set anywhere is a setting the binary reads, and
  every Secret / ConfigMap reference resolves;
- shutdown: terminationGracePeriodSeconds > preStop pause + CLAIRON_SHUTDOWN_GRACE_SECS;
- pod security (restricted profile), resources, read-only root for Clairon;
- Kafka: quorum voters, broker list and replication agree with the replicas;
- the image: Dockerfile, .dockerignore, the image placeholder of the scripts;
- alert rules and dashboard use metric names the code registers.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import sys

import yaml

sys.dont_write_bytecode = True  # no __pycache__ in the work tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deploylib as d  # noqa: E402

# The specification's public paths (seed: "Accès aux services") and the
# service each must reach. `/api` (the gateway) is served by web through `/`.
INGRESS_PATHS = {
    "/": "web",
    "/dashboard": "web",
    "/notifications": "web",
    "/monitoring": "web",
    "/api/users": "users",
    "/api/notifications": "notifications",
    "/api/events": "events",
    "/api/logs": "logs",
    "/kafka-ui": "kafka-ui",
}
SEED_ROUTES = dict(INGRESS_PATHS, **{"/api": "web", "/ws": "web"})
HOST = "notifications.example.com"

# Metric names the alert rules and dashboard use that the code does not
# register yet (being added): reported as warnings, not failures.
PENDING_METRICS: set[str] = set()
# Metrics from outside the services (kube-state-metrics, Prometheus itself).
EXTERNAL_METRICS = {
    "up",
    "kube_pod_info",
    "kube_pod_status_ready",
    "kube_pod_status_phase",
    "kube_deployment_status_replicas_available",
    "kube_deployment_spec_replicas",
}
EXPECTED_KAFKA_NODES = {"base": 1, "production": 3}
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "by", "without", "on", "ignoring", "group_left",
    "group_right", "and", "or", "unless", "rate", "irate", "increase", "delta", "deriv",
    "histogram_quantile", "label_replace", "offset", "bool", "topk", "bottomk", "abs",
    "clamp_min", "clamp_max", "vector", "scalar", "time", "absent", "changes", "resets",
    "avg_over_time", "max_over_time", "min_over_time", "sum_over_time", "quantile",
}


def seed_paths() -> dict[str, str] | None:
    """URL paths listed by the seed specification, when it is at hand."""
    for cand in (
        os.path.join(d.ROOT, "..", "shared", "seed", "platform-spec.fr.md"),
        "/work/shared/seed/platform-spec.fr.md",
    ):
        if os.path.isfile(cand):
            with open(cand, encoding="utf-8") as f:
                text = f.read()
            section = text.split("### Accès aux services", 1)[-1].split("\n## ", 1)[0]
            paths = set()
            for m in re.finditer(r"https?://" + re.escape(HOST) + r"(/[^\s)]*)?", section):
                paths.add(m.group(1) or "/")
            for m in re.finditer(r":\s*(/api/[a-z]+)\s*$", section, re.M):
                paths.add(m.group(1))
            return {p.rstrip("/") or "/": "" for p in paths}
    return None


def route(paths: list[tuple[str, str]], url_path: str) -> str | None:
    """The backend an Ingress with Prefix paths picks for url_path (longest match)."""
    best = None
    for p, backend in paths:
        if url_path == p or p == "/" or url_path.startswith(p.rstrip("/") + "/"):
            if best is None or len(p) > len(best[0]):
                best = (p, backend)
    return best[1] if best else None


def env_value(container: dict, name: str):
    for e in container.get("env") or []:
        if e["name"] == name:
            return e
    return None


def check_rendering(c: d.Checks, label: str, objs: list[dict]) -> None:
    print(f"- {label}")
    settings = d.settings()
    known = set(settings)
    ports = d.service_ports()
    svc_names = d.service_names()
    deployments = d.by_kind(objs, "Deployment")
    statefulsets = d.by_kind(objs, "StatefulSet")
    services = d.by_kind(objs, "Service")
    configmaps = d.by_kind(objs, "ConfigMap")
    secrets = d.by_kind(objs, "Secret")
    jobs = d.by_kind(objs, "Job")
    workloads = d.workloads(objs)
    health = d.read("crates", "http", "src", "health.rs")
    metrics_rs = d.read("crates", "http", "src", "metrics.rs")
    serve_rs = d.read("crates", "clairon", "src", "serve.rs")

    # Namespace and phases.
    c.check(all(o["metadata"].get("namespace") == d.NAMESPACE for o in objs if o["kind"] != "Namespace"),
            f"{label}: every object is in {d.NAMESPACE}")
    c.check(set(d.by_kind(objs, "Namespace")) == {d.NAMESPACE}, f"{label}: the Namespace object exists")
    unphased = [f"{o['kind']}/{o['metadata']['name']}" for o in objs
                if not (o["metadata"].get("labels") or {}).get("clairon.dev/deploy-phase")]
    c.check(not unphased, f"{label}: every object has a clairon.dev/deploy-phase label", ", ".join(unphased))

    # ------------------------------------------------------------ routes the binary serves
    c.check(len(ports) == 5, f"{label}: config.rs gives the five services' default ports", str(ports))
    for p in ("/health/live", "/health/ready"):
        c.check(f'"{p}"' in health, f"health route {p} exists in crates/http/src/health.rs")
    c.check('"/metrics"' in metrics_rs, "/metrics exists in crates/http/src/metrics.rs")
    c.check("health::router" in serve_rs and "metrics::router" in serve_rs,
            "every service listener gets the health and metrics routes (serve.rs)")

    # ------------------------------------------------------------ the five services
    clairon_images = set()
    for name in d.SERVICES:
        dep, svc = deployments.get(name), services.get(name)
        if not c.check(dep is not None and svc is not None, f"{label}: Deployment and Service {name} exist"):
            continue
        spec = d.pod_spec(dep)
        cont = [x for x in spec["containers"] if x["name"] == name]
        if not c.check(len(cont) == 1, f"{label}: {name} has a container named {name}"):
            continue
        ct = cont[0]
        clairon_images.add(ct.get("image"))
        c.check(name in svc_names, f"`--services {name}` is a value the binary accepts", str(svc_names))
        cmd = (ct.get("command") or []) + (ct.get("args") or [])
        c.check(cmd == ["serve", "--services", name], f"{label}: {name} runs `clairon serve --services {name}`", str(cmd))
        cports = {p.get("name"): p["containerPort"] for p in ct.get("ports") or []}
        c.check(cports.get("http") == ports.get(name),
                f"{label}: {name} container port http = {ports.get(name)} (CLAIRON_{name.upper()}_ADDR default)", str(cports))
        sports = svc["spec"]["ports"]
        c.check(len(sports) == 1 and sports[0]["port"] == ports.get(name)
                and sports[0].get("targetPort") in ("http", ports.get(name)),
                f"{label}: Service {name} port {ports.get(name)} targets the container's http port", str(sports))
        c.check(d.selector_matches({"matchLabels": svc["spec"]["selector"]}, d.template_labels(dep)),
                f"{label}: Service {name} selects the {name} pods")
        for probe, want in (("readinessProbe", "/health/ready"), ("livenessProbe", "/health/live"),
                            ("startupProbe", None)):
            pr = ct.get(probe) or {}
            get = pr.get("httpGet") or {}
            ok = bool(get) and get.get("port") in ("http", ports.get(name)) and (
                get.get("path") == want if want else get.get("path") in ("/health/live", "/health/ready"))
            c.check(ok, f"{label}: {name} {probe} on {want or 'a health path'} of the http port", str(pr))
        # Shutdown.
        grace = (configmaps.get("clairon-config", {}).get("data") or {}).get("CLAIRON_SHUTDOWN_GRACE_SECS") \
            or settings.get("CLAIRON_SHUTDOWN_GRACE_SECS")
        pre = ((ct.get("lifecycle") or {}).get("preStop") or {}).get("sleep", {}).get("seconds", 0)
        tgps = spec.get("terminationGracePeriodSeconds", 30)
        c.check(pre > 0, f"{label}: {name} pauses before SIGTERM (preStop sleep) so endpoints drain")
        c.check(tgps > pre + int(grace),
                f"{label}: {name} terminationGracePeriodSeconds {tgps} > preStop {pre} + shutdown grace {grace}")
        # Clairon hardening: read-only root, writable /tmp and data folder.
        sc = ct.get("securityContext") or {}
        c.check(sc.get("readOnlyRootFilesystem") is True, f"{label}: {name} has a read-only root filesystem")
        data_dir = (configmaps.get("clairon-config", {}).get("data") or {}).get("CLAIRON_DATA_DIR")
        mounts = {m["mountPath"]: m["name"] for m in ct.get("volumeMounts") or []}
        vols = {v["name"]: v for v in spec.get("volumes") or []}
        for mp in ("/tmp", data_dir):
            c.check(mp in mounts and "emptyDir" in vols.get(mounts[mp], {}),
                    f"{label}: {name} mounts an emptyDir at {mp}")
        if name == "web":
            g = env_value(ct, "CLAIRON_WEB_GROUP")
            c.check(bool(g) and g.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name",
                    f"{label}: each web replica gets its own CLAIRON_WEB_GROUP (its pod name)")

    # The topic Job.
    job = jobs.get("kafka-topics")
    if c.check(job is not None, f"{label}: the kafka-topics Job exists"):
        ct = d.pod_spec(job)["containers"][0]
        clairon_images.add(ct.get("image"))
        c.check((ct.get("command") or []) + (ct.get("args") or []) == ["kafka", "init"],
                f"{label}: the Job runs `clairon kafka init`")
        c.check(d.has_kafka_init_command(), "the binary has a `kafka init` command (config.rs)")
    c.check(len(clairon_images) == 1 and None not in clairon_images,
            f"{label}: one image for every Clairon container", str(clairon_images))
    c.check(clairon_images == {d.CLAIRON_IMAGE_PLACEHOLDER},
            f"{label}: the Clairon image is the placeholder the deploy script replaces", str(clairon_images))

    # ------------------------------------------------------------ selectors and references
    for o in workloads:
        sel = o["spec"].get("selector")
        if o["kind"] == "Job" and sel is None:
            continue
        c.check(d.selector_matches(sel, d.template_labels(o)),
                f"{label}: {o['kind']} {o['metadata']['name']} selector matches its pod labels")
    pods = [(o, d.template_labels(o)) for o in workloads]
    for name, svc in services.items():
        sel = svc["spec"].get("selector") or {}
        hits = [o for o, labels in pods if d.selector_matches({"matchLabels": sel}, labels)]
        c.check(bool(sel) and bool(hits), f"{label}: Service {name} selects pods")
        for p in svc["spec"]["ports"]:
            tp = p.get("targetPort", p["port"])
            for o in hits:
                names = {cp.get("name") for ct in d.pod_spec(o)["containers"] for cp in ct.get("ports") or []}
                nums = {cp["containerPort"] for ct in d.pod_spec(o)["containers"] for cp in ct.get("ports") or []}
                c.check(tp in names or tp in nums, f"{label}: Service {name} port {p['port']} reaches a container port")
    for name, sts in statefulsets.items():
        c.check(sts["spec"].get("serviceName") in services
                and services[sts["spec"]["serviceName"]]["spec"].get("clusterIP") == "None",
                f"{label}: StatefulSet {name} has its headless Service")
    for name, pdb in d.by_kind(objs, "PodDisruptionBudget").items():
        c.check(any(d.selector_matches(pdb["spec"]["selector"], labels) for _, labels in pods),
                f"{label}: PodDisruptionBudget {name} selects pods")
    for svc in d.SERVICES:
        c.check(any(d.selector_matches(p["spec"]["selector"], d.template_labels(deployments[svc]))
                    for p in d.by_kind(objs, "PodDisruptionBudget").values()) if svc in deployments else False,
                f"{label}: {svc} has a PodDisruptionBudget")
    for name, hpa in d.by_kind(objs, "HorizontalPodAutoscaler").items():
        ref = hpa["spec"]["scaleTargetRef"]
        target = deployments.get(ref["name"]) if ref["kind"] == "Deployment" else None
        c.check(target is not None, f"{label}: HPA {name} scales an existing Deployment")
        if target is not None:
            c.check("replicas" not in target["spec"],
                    f"{label}: Deployment {ref['name']} leaves its replicas to the HPA")
    c.check({"notifications", "web"} <= set(d.by_kind(objs, "HorizontalPodAutoscaler")),
            f"{label}: notifications and web have HorizontalPodAutoscalers")

    for name, np in d.by_kind(objs, "NetworkPolicy").items():
        sel = np["spec"]["podSelector"]
        if sel:
            c.check(any(d.selector_matches(sel, labels) for _, labels in pods),
                    f"{label}: NetworkPolicy {name} applies to pods")
        for rule in (np["spec"].get("ingress") or []) + (np["spec"].get("egress") or []):
            for peer in (rule.get("from") or []) + (rule.get("to") or []):
                if "podSelector" in peer and "namespaceSelector" not in peer and peer["podSelector"]:
                    c.check(any(d.selector_matches(peer["podSelector"], labels) for _, labels in pods),
                            f"{label}: NetworkPolicy {name} peer {peer['podSelector']} matches pods")
    check_network_flows(c, label, objs, pods, ports)

    # ------------------------------------------------------------ environment
    used: dict[str, str] = {}
    for o in workloads:
        spec = d.pod_spec(o)
        for ct in d.containers(spec):
            where = f"{o['kind']}/{o['metadata']['name']}"
            names = []
            for e in ct.get("env") or []:
                names.append(e["name"])
                if e["name"].startswith("CLAIRON_"):
                    used[e["name"]] = where
                for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", e.get("value", "")):
                    c.check(ref in names[:-1], f"{label}: {where} env {e['name']} uses $({ref}) defined before it")
                vf = e.get("valueFrom") or {}
                if "secretKeyRef" in vf:
                    r = vf["secretKeyRef"]
                    sec = secrets.get(r["name"])
                    keys = set((sec or {}).get("stringData") or {}) | set((sec or {}).get("data") or {})
                    c.check(sec is not None, f"{label}: {where} env {e['name']} names an existing Secret {r['name']}")
                    if not r.get("optional"):
                        c.check(r["key"] in keys, f"{label}: {where} env {e['name']} reads key {r['key']} of Secret {r['name']}")
                    if r["key"].startswith("CLAIRON_"):
                        used[r["key"]] = where
                if "configMapKeyRef" in vf:
                    r = vf["configMapKeyRef"]
                    c.check(r["key"] in (configmaps.get(r["name"], {}).get("data") or {}) or r.get("optional"),
                            f"{label}: {where} env {e['name']} reads an existing ConfigMap key")
            for ef in ct.get("envFrom") or []:
                if "configMapRef" in ef:
                    cm = configmaps.get(ef["configMapRef"]["name"])
                    c.check(cm is not None, f"{label}: {where} envFrom ConfigMap {ef['configMapRef']['name']} exists")
                    for k in (cm or {}).get("data") or {}:
                        if k.startswith("CLAIRON_"):
                            used[k] = f"ConfigMap/{ef['configMapRef']['name']}"
                if "secretRef" in ef:
                    sec = secrets.get(ef["secretRef"]["name"])
                    c.check(sec is not None, f"{label}: {where} envFrom Secret {ef['secretRef']['name']} exists")
                    for k in list(((sec or {}).get("stringData") or {})) + list(((sec or {}).get("data") or {})):
                        if k.startswith("CLAIRON_"):
                            used[k] = f"Secret/{ef['secretRef']['name']}"
    for s in secrets.values():
        for k in list(s.get("stringData") or {}) + list(s.get("data") or {}):
            if k.startswith("CLAIRON_"):
                used.setdefault(k, f"Secret/{s['metadata']['name']}")
    unknown = {k: v for k, v in used.items() if k not in known}
    c.check(not unknown, f"{label}: every CLAIRON_* variable ({len(used)}) is a setting of the binary",
            ", ".join(f"{k} ({v})" for k, v in sorted(unknown.items())))
    for k in ("CLAIRON_KAFKA_BROKERS", "CLAIRON_DATABASE_URL", "CLAIRON_JWT_SECRET", "CLAIRON_USERS_URL",
              "CLAIRON_NOTIFICATIONS_URL", "CLAIRON_EVENTS_URL", "CLAIRON_LOGS_URL"):
        c.check(k in used, f"{label}: {k} is set")

    # Placeholder Secrets agree with each other and with the MySQL Service.
    app = (secrets.get("clairon-secrets") or {}).get("stringData") or {}
    db = (secrets.get("mysql-credentials") or {}).get("stringData") or {}
    m = re.match(r"mysql://([^:]+):([^@]+)@([^:/]+):(\d+)/(\w+)$", app.get("CLAIRON_DATABASE_URL", ""))
    if c.check(m is not None, f"{label}: CLAIRON_DATABASE_URL is a mysql:// URL"):
        user, pw, host, port, dbname = m.groups()
        c.check((user, pw, dbname) == (db.get("MYSQL_USER"), db.get("MYSQL_PASSWORD"), db.get("MYSQL_DATABASE")),
                f"{label}: the database URL's user, password and database are mysql-credentials'")
        c.check(host.split(".")[0] in services and host.endswith(f".{d.NAMESPACE}.svc.cluster.local")
                and int(port) == 3306, f"{label}: the database URL points at the mysql Service")
    for s in secrets.values():
        for k, v in (s.get("stringData") or {}).items():
            if "PASSWORD" in k or "SECRET" in k or "TOKEN" in k:
                c.check("CHANGE-ME" in str(v), f"{label}: Secret {s['metadata']['name']} key {k} is an obvious placeholder")

    # ------------------------------------------------------------ pod security and resources
    for o in workloads:
        spec = d.pod_spec(o)
        where = f"{o['kind']}/{o['metadata']['name']}"
        psc = spec.get("securityContext") or {}
        c.check(not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), f"{label}: {where} shares no host namespace")
        c.check(not any("hostPath" in v for v in spec.get("volumes") or []), f"{label}: {where} mounts no hostPath")
        c.check(spec.get("automountServiceAccountToken") is False, f"{label}: {where} mounts no API token")
        for ct in d.containers(spec):
            sc = ct.get("securityContext") or {}
            w = f"{where}/{ct['name']}"
            c.check((sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True)
                    and sc.get("runAsUser", psc.get("runAsUser", 1)) != 0, f"{label}: {w} runs as non-root")
            c.check((sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type") == "RuntimeDefault",
                    f"{label}: {w} uses the RuntimeDefault seccomp profile")
            c.check(sc.get("allowPrivilegeEscalation") is False and not sc.get("privileged"),
                    f"{label}: {w} cannot escalate privileges")
            c.check("ALL" in ((sc.get("capabilities") or {}).get("drop") or []) and
                    not (sc.get("capabilities") or {}).get("add"), f"{label}: {w} drops all capabilities")
            res = ct.get("resources") or {}
            c.check(all(k in (res.get("requests") or {}) and k in (res.get("limits") or {}) for k in ("cpu", "memory")),
                    f"{label}: {w} has cpu and memory requests and limits")

    # ------------------------------------------------------------ Kafka
    check_kafka(c, label, objs, statefulsets, services, configmaps)

    # ------------------------------------------------------------ Ingress
    ing = d.by_kind(objs, "Ingress")
    if c.check(len(ing) == 1, f"{label}: one Ingress"):
        spec = next(iter(ing.values()))["spec"]
        rules = spec["rules"]
        c.check([r.get("host") for r in rules] == [HOST], f"{label}: the Ingress serves {HOST}")
        paths = [(p["path"], p["backend"]["service"]["name"]) for p in rules[0]["http"]["paths"]]
        c.check(sorted(paths) == sorted(INGRESS_PATHS.items()),
                f"{label}: Ingress paths are exactly the specification's", str(sorted(paths)))
        c.check(all(p.get("pathType") == "Prefix" for p in rules[0]["http"]["paths"]), f"{label}: Ingress paths are Prefix")
        for p in rules[0]["http"]["paths"]:
            b = p["backend"]["service"]
            svc = services.get(b["name"])
            c.check(svc is not None and b["port"].get("number") in [sp["port"] for sp in svc["spec"]["ports"]],
                    f"{label}: Ingress {p['path']} reaches a port of Service {b['name']}")
        for url, want in SEED_ROUTES.items():
            got = route(paths, url)
            c.check(got == want, f"{label}: {HOST}{url} is routed to {want}", f"routed to {got}")
        seed = seed_paths()
        if seed is not None:
            missing = [p for p in seed if route(paths, p) != SEED_ROUTES.get(p)]
            c.check(set(seed) <= set(SEED_ROUTES) and not missing,
                    f"{label}: every URL of the seed specification is routed as expected",
                    f"seed paths {sorted(seed)}, misrouted {missing}")


def check_network_flows(c: d.Checks, label: str, objs, pods, ports) -> None:
    """The flows the platform needs are allowed; the service ports admit no one else."""
    nps = list(d.by_kind(objs, "NetworkPolicy").values())
    labels_of = {o["metadata"]["name"]: labels for o, labels in pods}

    def allowed(direction: str, pod: str, peer: str | None, port: int, peer_ns: str | None = None) -> bool:
        key, peers = ("ingress", "from") if direction == "ingress" else ("egress", "to")
        for np in nps:
            if not d.selector_matches(np["spec"]["podSelector"], labels_of[pod]) and np["spec"]["podSelector"]:
                continue
            for rule in np["spec"].get(key) or []:
                ps = [p.get("port") for p in rule.get("ports") or []]
                if ps and port not in ps:
                    continue
                for p in rule.get(peers) or [{}]:
                    if peer_ns is not None:
                        ns = (p.get("namespaceSelector") or {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
                        if ns == peer_ns and "podSelector" not in p:
                            return True
                    elif peer is not None and "podSelector" in p and "namespaceSelector" not in p:
                        if d.selector_matches(p["podSelector"], labels_of[peer]) or p["podSelector"] == {}:
                            return True
                    elif peer is None and "ipBlock" in p:
                        return True
        return False

    c.check(any(np["spec"]["podSelector"] == {} and set(np["spec"]["policyTypes"]) == {"Ingress", "Egress"}
                and not np["spec"].get("ingress") and not np["spec"].get("egress") for np in nps),
            f"{label}: a default-deny NetworkPolicy covers the namespace")
    for name in d.SERVICES:
        port = ports[name]
        c.check(allowed("ingress", name, None, port, "ingress-nginx"), f"{label}: the ingress controller reaches {name}:{port}")
        c.check(allowed("ingress", name, None, port, "monitoring"), f"{label}: Prometheus reaches {name}:{port}/metrics")
        if name != "web":
            c.check(allowed("ingress", name, "web", port) and allowed("egress", "web", name, port),
                    f"{label}: the web gateway reaches {name}:{port}")
        c.check(not allowed("ingress", name, "kafka-ui", port), f"{label}: Kafka UI cannot reach {name}:{port}")
        for peer, p in (("kafka", 9092), ("mysql", 3306)):
            c.check(allowed("egress", name, peer, p) and allowed("ingress", peer, name, p),
                    f"{label}: {name} reaches {peer}:{p}")
    c.check(allowed("egress", "notifications", "users", 8081) and allowed("ingress", "users", "notifications", 8081),
            f"{label}: notifications reaches users:8081 (contact look-ups)")
    for p in (25, 465, 587, 443):
        c.check(allowed("egress", "notifications", None, p), f"{label}: notifications reaches SMTP/SMS providers on {p}")
        c.check(not allowed("egress", "web", None, p), f"{label}: web has no egress to the outside on {p}")
    c.check(allowed("egress", "kafka-topics", "kafka", 9092) and allowed("ingress", "kafka", "kafka-topics", 9092),
            f"{label}: the topic Job reaches kafka:9092")
    c.check(allowed("egress", "kafka-ui", "kafka", 9092) and allowed("ingress", "kafka", "kafka-ui", 9092),
            f"{label}: Kafka UI reaches kafka:9092")
    c.check(not allowed("ingress", "mysql", "kafka-ui", 3306), f"{label}: Kafka UI cannot reach MySQL")
    c.check(allowed("ingress", "kafka-ui", None, 8080, "ingress-nginx"), f"{label}: the ingress controller reaches Kafka UI")
    c.check(allowed("ingress", "kafka", "kafka", 9093) and allowed("egress", "kafka", "kafka", 9093),
            f"{label}: Kafka controllers reach each other on 9093")
    for o, _ in pods:
        c.check(allowed("egress", o["metadata"]["name"], None, 53, "kube-system")
                or any(np["spec"]["podSelector"] == {} and any(
                    53 in [p.get("port") for p in r.get("ports") or []] for r in np["spec"].get("egress") or [])
                    for np in nps), f"{label}: {o['metadata']['name']} may resolve names (DNS egress)")


def check_kafka(c: d.Checks, label: str, objs, statefulsets, services, configmaps) -> None:
    sts = statefulsets.get("kafka")
    if not c.check(sts is not None, f"{label}: the kafka StatefulSet exists"):
        return
    n = sts["spec"].get("replicas", 1)
    want = EXPECTED_KAFKA_NODES.get(label)
    if want is not None:
        c.check(n == want, f"{label}: Kafka runs {want} node(s)", str(n))
    c.check(sts["spec"].get("podManagementPolicy") == "Parallel", f"{label}: Kafka nodes start in parallel (quorum)")
    headless = sts["spec"]["serviceName"]
    c.check(services.get(headless, {}).get("spec", {}).get("publishNotReadyAddresses") is True,
            f"{label}: {headless} publishes not-ready addresses (controllers find each other)")
    ct = d.pod_spec(sts)["containers"][0]
    env = {e["name"]: e.get("value") for e in ct.get("env") or []}
    node_id = env_value(ct, "KAFKA_NODE_ID") or {}
    c.check(node_id.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
            == "metadata.labels['apps.kubernetes.io/pod-index']", f"{label}: Kafka's node id is the pod ordinal")
    fqdn = f"{headless}.{d.NAMESPACE}.svc.cluster.local"
    voters = [f"{i}@kafka-{i}.{fqdn}:9093" for i in range(n)]
    c.check(env.get("KAFKA_CONTROLLER_QUORUM_VOTERS") == ",".join(voters),
            f"{label}: quorum voters are the {n} pods", env.get("KAFKA_CONTROLLER_QUORUM_VOTERS", ""))
    cfg = configmaps.get("clairon-config", {}).get("data") or {}
    brokers = cfg.get("CLAIRON_KAFKA_BROKERS", "").split(",")
    c.check(brokers == [f"kafka-{i}.{fqdn}:9092" for i in range(n)],
            f"{label}: CLAIRON_KAFKA_BROKERS lists the {n} brokers", str(brokers))
    rf = int(cfg.get("CLAIRON_KAFKA_REPLICATION_FACTOR", "1"))
    min_isr = int(env.get("KAFKA_MIN_INSYNC_REPLICAS") or 1)
    c.check(rf == n and int(env.get("KAFKA_DEFAULT_REPLICATION_FACTOR") or 0) == n
            and int(env.get("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR") or 0) == n,
            f"{label}: topics (Clairon's, default, offsets) are replicated on all {n} node(s)")
    c.check(min_isr == (1 if n == 1 else n - 1), f"{label}: min.insync.replicas is {1 if n == 1 else n - 1}", str(min_isr))
    c.check(int(cfg.get("CLAIRON_KAFKA_PARTITIONS", "0")) >= 1, f"{label}: CLAIRON_KAFKA_PARTITIONS is set")


def check_image_files(c: d.Checks) -> None:
    print("- Dockerfile, .dockerignore, scripts")
    text = d.read("Dockerfile")
    lines = [l.strip() for l in re.sub(r"\\\n", " ", text).splitlines() if l.strip() and not l.strip().startswith("#")]
    froms = [l for l in lines if l.upper().startswith("FROM ")]
    c.check(len(froms) >= 2, "the Dockerfile has a build stage and a runtime stage")
    final = froms[-1].split()[1] if froms else ""
    c.check(final in ("gcr.io/distroless/cc-debian12:nonroot", "debian:12-slim"),
            "the runtime stage is distroless cc-debian12:nonroot or debian:12-slim", final)
    final_stage = lines[lines.index(froms[-1]):] if froms else []
    c.check(not any(re.search(r"apt-get|cargo|rustc|gcc|\bmake\b", l) for l in final_stage if l.startswith("RUN")),
            "the runtime stage installs and builds nothing")
    c.check(any("cargo build" in l and "--release" in l and "-p clairon" in l for l in lines),
            "the build runs `cargo build --release -p clairon`")
    c.check(any(re.search(r"apt-get install.*\bgcc\b.*\bg\+\+.*\bmake\b.*\bpkg-config\b", l) for l in lines),
            "the build stage installs gcc, g++, make and pkg-config (bundled librdkafka)")
    users = [l.split()[1] for l in final_stage if l.upper().startswith("USER ")]
    c.check(bool(users) and users[-1].split(":")[0] not in ("0", "root"), "the image runs as a non-root user", str(users))
    ep = [l for l in final_stage if l.upper().startswith("ENTRYPOINT")]
    cmd = [l for l in final_stage if l.upper().startswith("CMD")]
    c.check(bool(ep) and json.loads(ep[-1].split(None, 1)[1])[0].endswith("/clairon"), "ENTRYPOINT is the clairon binary")
    c.check(bool(cmd) and json.loads(cmd[-1].split(None, 1)[1]) == ["serve"], "the default CMD is `serve`")
    exposed = sorted(int(p) for l in final_stage if l.upper().startswith("EXPOSE ") for p in l.split()[1:])
    c.check(exposed == sorted(d.service_ports().values()), "EXPOSE lists the five service ports", str(exposed))

    copies = [l.split()[1:-1] for l in lines if l.upper().startswith("COPY ") and "--from" not in l]
    c.check(sorted(x for cp in copies for x in cp) == ["Cargo.lock", "Cargo.toml", "crates"],
            "the build stage copies Cargo.toml, Cargo.lock and crates/ only", str(copies))
    for p in ("target/release/clairon", "data/bus.db", "node_modules/x/index.js", ".git/HEAD", "deploy/kubernetes/base/web.yaml",
              "crates/web/target/debug/x", "docs/api-contract.md"):
        c.check(ignored(p), f".dockerignore keeps {p} out of the build context")
    for p in ("Cargo.toml", "Cargo.lock", "crates/clairon/src/main.rs", "crates/web/assets/index.html", "crates/bus/Cargo.toml"):
        c.check(not ignored(p), f".dockerignore keeps {p} in the build context")

    deploy_sh = d.read("scripts", "deploy-to-kubernetes.sh")
    c.check(f"PLACEHOLDER_IMAGE={d.CLAIRON_IMAGE_PLACEHOLDER}" in deploy_sh,
            "the deploy script replaces the image placeholder of the manifests")
    build_sh = d.read("scripts", "build-docker-images.sh")
    c.check('REGISTRY="${REGISTRY:-registry.example.com}"' in build_sh and 'IMAGE_NAME="${IMAGE_NAME:-clairon}"' in build_sh,
            "the build script's default image is the deploy script's")

    compose = d.path("docker-compose.yml")
    if os.path.isfile(compose):
        with open(compose, encoding="utf-8") as f:
            svcs = (yaml.safe_load(f) or {}).get("services") or {}
        objs = d.render("deploy/kubernetes/base")
        k8s_images = {ct["image"].split(":")[0]: ct["image"] for o in d.workloads(objs)
                      for ct in d.pod_spec(o)["containers"]}
        for s in svcs.values():
            img = s.get("image", "")
            base = img.split(":")[0]
            if base in k8s_images:
                c.check(k8s_images[base] == img, f"Kubernetes and docker-compose.yml run the same {base}",
                        f"{k8s_images[base]} vs {img}")


def dockerignore_rules() -> list[tuple[bool, str]]:
    rules = []
    for l in d.read(".dockerignore").splitlines():
        l = l.strip()
        if l and not l.startswith("#"):
            rules.append((l.startswith("!"), l.lstrip("!").rstrip("/")))
    return rules


def ignored(p: str, rules: list[tuple[bool, str]] | None = None) -> bool:
    """Whether .dockerignore keeps path p (relative, with /) out of the build context:
    patterns in order, the last match wins, `!` re-includes, a match on a folder
    covers what it holds."""
    out = False
    parts = p.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for neg, pat in rules if rules is not None else dockerignore_rules():
        hit = any(fnmatch.fnmatchcase(x, pat) or (pat.startswith("**/") and any(
            fnmatch.fnmatchcase("/".join(parts[j:i + 1]), pat[3:]) for j in range(i + 1)))
            for i, x in enumerate(prefixes))
        if hit:
            out = not neg
    return out


def copy_build_context(out: str) -> int:
    """Copies what `docker build .` would send (per .dockerignore) into out."""
    rules = dockerignore_rules()
    negated = [pat for neg, pat in rules if neg]
    n = 0
    for dirpath, dirnames, filenames in os.walk(d.ROOT):
        rel = os.path.relpath(dirpath, d.ROOT).replace(os.sep, "/")
        rel = "" if rel == "." else rel + "/"
        dirnames[:] = [x for x in dirnames if x != ".git" and not (
            ignored(rel + x, rules) and not any(pat.startswith(rel + x + "/") or pat == rel + x for pat in negated))]
        for f in filenames:
            if not ignored(rel + f, rules):
                dst = os.path.join(out, rel + f)
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                shutil.copy2(os.path.join(dirpath, f), dst)
                n += 1
    return n


def used_metrics(expr: str) -> set[str]:
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # drop label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # drop matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # drop ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b", expr))
    return {n for n in names if n not in PROMQL_WORDS and not re.fullmatch(r"\d.*|e|Inf|NaN", n)}


def check_metrics(c: d.Checks, rules_objs: list[dict], dashboard: dict, dashboard_rules: str | None) -> None:
    print("- metric names of the alert rules and the dashboard")
    code = d.code_metrics()
    exprs = []
    for o in rules_objs:
        if o.get("kind") == "PrometheusRule":
            for g in o["spec"]["groups"]:
                exprs += [("rule " + (r.get("alert") or r.get("record")), r["expr"]) for r in g["rules"]]
    panels = []
    stack = list(dashboard.get("panels") or [])
    while stack:
        p = stack.pop(0)
        panels.append(p)
        stack += p.get("panels") or []
    for p in panels:
        for t in p.get("targets") or []:
            exprs.append((f"panel {p.get('title')}", t["expr"]))
    c.check(len(exprs) > 10, "rules and dashboard have queries", str(len(exprs)))
    pending_used = set()
    for where, e in exprs:
        for m in used_metrics(e):
            base = re.sub(r"_(bucket|sum|count)$", "", m)
            if m in EXTERNAL_METRICS:
                continue
            if m in code or (base in code and code[base] == "histogram" and base != m):
                if m.endswith("_bucket") and not d.has_buckets(base):
                    c.warn(f"{where}: {m}: {base} has no bucket matcher in crates/http/src/metrics.rs, "
                           "so it is exported as a summary and has no _bucket series")
                c.check(True, f"{where}: {m}")
            elif base in PENDING_METRICS or m in PENDING_METRICS:
                pending_used.add(base)
            else:
                c.check(False, f"{where}: {m} is a metric the code registers", "not found in crates/")
    for m in sorted(pending_used):
        if m in code:
            c.warn(f"{m} is now registered by the code: remove it from PENDING_METRICS")
        else:
            c.warn(f"{m} is not registered by the code yet (assumed, being added)")

    # Dashboard shape.
    ids = [p.get("id") for p in panels]
    c.check(len(ids) == len(set(ids)), "dashboard panel ids are unique")
    c.check(bool(dashboard.get("uid")) and bool(dashboard.get("title")), "dashboard has a uid and a title")
    c.check(any(v.get("type") == "datasource" for v in dashboard.get("templating", {}).get("list", [])),
            "dashboard lets the data source be chosen")
    for p in panels:
        if p.get("type") != "row":
            c.check(bool(p.get("targets")) and p.get("datasource", {}).get("uid") == "${datasource}",
                    f"dashboard panel {p.get('title')} queries the chosen data source")
    if dashboard_rules:
        # promtool check rules parses each dashboard query as a recording rule.
        rules = [{"record": f"dashboard:query:{i}",
                  "expr": e.replace("$__rate_interval", "5m").replace("$namespace", d.NAMESPACE)}
                 for i, (w, e) in enumerate(exprs) if w.startswith("panel ")]
        with open(dashboard_rules, "w", encoding="utf-8") as f:
            yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}, f, sort_keys=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rendered", action="append", default=[], metavar="NAME=FILE",
                    help="a rendered kustomization (base=..., production=...)")
    ap.add_argument("--monitoring", metavar="FILE", help="the rendered monitoring kustomization")
    ap.add_argument("--dashboard-rules", metavar="OUT",
                    help="write the dashboard's queries as a rules file, for promtool check rules")
    ap.add_argument("--build-context", metavar="DIR",
                    help="only copy the Docker build context (per .dockerignore) into DIR")
    args = ap.parse_args()
    if args.build_context:
        print(f"copied {copy_build_context(args.build_context)} files of the build context")
        return 0

    c = d.Checks("check_consistency")
    renders = []
    for r in args.rendered:
        name, _, file = r.partition("=")
        renders.append((name, d.load_docs(file)))
    if not renders:
        renders = [("base", d.render("deploy/kubernetes/base")),
                   ("production", d.render("deploy/kubernetes/overlays/production"))]
    for name, objs in renders:
        check_rendering(c, name, objs)
    check_image_files(c)
    monitoring = d.load_docs(args.monitoring) if args.monitoring else d.render("deploy/kubernetes/monitoring")
    with open(d.path("deploy", "grafana", "clairon-dashboard.json"), encoding="utf-8") as f:
        dashboard = json.load(f)
    check_metrics(c, monitoring, dashboard, args.dashboard_rules)
    return c.finish()


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Self-test of the deployment checks: each mistake below, made on a copy of
the rendered manifests, must make check_consistency.py or check_crds.py fail.
A check that passes everything would otherwise go unnoticed.

    python3 tests/deploy/test_checks_catch_errors.py
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import tempfile

import yaml

sys.dont_write_bytecode = True  # no __pycache__ in the work tree
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import deploylib as d  # noqa: E402


def find(objs, kind, name):
    return next(o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name)


def container(objs, kind, name):
    return d.pod_spec(find(objs, kind, name))["containers"][0]


def env(objs, kind, name, var):
    return next(e for e in container(objs, kind, name)["env"] if e["name"] == var)


# (what, which rendering to break, how)
PLATFORM_MUTANTS = [
    ("an Ingress path renamed", "base",
     lambda o: find(o, "Ingress", "clairon")["spec"]["rules"][0]["http"]["paths"][1].update(path="/dash")),
    ("an Ingress path sent to the wrong service", "base",
     lambda o: find(o, "Ingress", "clairon")["spec"]["rules"][0]["http"]["paths"][4]["backend"]["service"].update(name="web", port={"number": 8085})),
    ("an extra Ingress path", "production",
     lambda o: find(o, "Ingress", "clairon")["spec"]["rules"][0]["http"]["paths"].append(
         {"path": "/admin", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 8085}}}})),
    ("a CLAIRON_* variable the binary does not read", "base",
     lambda o: find(o, "ConfigMap", "clairon-config")["data"].update(CLAIRON_KAFKA_BROKER="x:9092")),
    ("a misspelt variable in a container", "production",
     lambda o: container(o, "Deployment", "web")["env"].append({"name": "CLAIRON_WEB_GRUOP", "value": "x"})),
    ("a wrong container port", "base",
     lambda o: container(o, "Deployment", "events")["ports"][0].update(containerPort=8080)),
    ("a wrong Service port", "production",
     lambda o: find(o, "Service", "logs")["spec"]["ports"][0].update(port=8086)),
    ("a readiness probe on the liveness path", "base",
     lambda o: container(o, "Deployment", "users")["readinessProbe"]["httpGet"].update(path="/health/live")),
    ("a probe on a path the binary does not serve", "base",
     lambda o: container(o, "Deployment", "users")["livenessProbe"]["httpGet"].update(path="/healthz")),
    ("no startup probe", "base", lambda o: container(o, "Deployment", "notifications").pop("startupProbe")),
    ("the wrong --services", "base", lambda o: container(o, "Deployment", "logs").update(args=["serve", "--services", "log"])),
    ("a grace period shorter than the shutdown", "production",
     lambda o: d.pod_spec(find(o, "Deployment", "web")).update(terminationGracePeriodSeconds=20)),
    ("a selector that misses its pods", "base",
     lambda o: find(o, "Deployment", "users")["spec"]["selector"]["matchLabels"].update({"app.kubernetes.io/name": "user"})),
    ("a Service selecting nothing", "base",
     lambda o: find(o, "Service", "events")["spec"]["selector"].update({"app.kubernetes.io/name": "event"})),
    ("a writable root filesystem", "base",
     lambda o: container(o, "Deployment", "web")["securityContext"].update(readOnlyRootFilesystem=False)),
    ("privilege escalation allowed", "production",
     lambda o: container(o, "StatefulSet", "kafka")["securityContext"].update(allowPrivilegeEscalation=True)),
    ("no memory limit", "base", lambda o: container(o, "StatefulSet", "mysql")["resources"]["limits"].pop("memory")),
    ("the web gateway cut off from users", "base",
     lambda o: o.remove(find(o, "NetworkPolicy", "web-egress-services"))),
    ("MySQL open to every pod", "base",
     lambda o: find(o, "NetworkPolicy", "mysql-ingress")["spec"]["ingress"][0].update({"from": [{"podSelector": {}}]})),
    ("no DNS egress", "production", lambda o: o.remove(find(o, "NetworkPolicy", "allow-dns-egress"))),
    ("Kafka voters out of step with its replicas", "production",
     lambda o: env(o, "StatefulSet", "kafka", "KAFKA_CONTROLLER_QUORUM_VOTERS").update(
         value="0@kafka-0.kafka-headless.notifications-platform.svc.cluster.local:9093")),
    ("a broker list missing a broker", "production",
     lambda o: find(o, "ConfigMap", "clairon-config")["data"].update(
         CLAIRON_KAFKA_BROKERS="kafka-0.kafka-headless.notifications-platform.svc.cluster.local:9092")),
    ("min.insync.replicas equal to the replication", "production",
     lambda o: env(o, "StatefulSet", "kafka", "KAFKA_MIN_INSYNC_REPLICAS").update(value="3")),
    ("a database password that differs from MySQL's", "base",
     lambda o: find(o, "Secret", "mysql-credentials")["stringData"].update(MYSQL_PASSWORD="CHANGE-ME-other")),
    ("a real-looking password committed", "base",
     lambda o: find(o, "Secret", "kafka-ui-credentials")["stringData"].update(SPRING_SECURITY_USER_PASSWORD="hunter2")),
    ("a reference to a missing Secret key", "base",
     lambda o: env(o, "Deployment", "users", "CLAIRON_ADMIN_PASSWORD")["valueFrom"]["secretKeyRef"].update(key="ADMIN")),
    ("a topic Job that runs something else", "base",
     lambda o: container(o, "Job", "kafka-topics").update(args=["kafka", "create"])),
    ("web replicas sharing one consumer group", "base",
     lambda o: container(o, "Deployment", "web")["env"].remove(env(o, "Deployment", "web", "CLAIRON_WEB_GROUP"))),
    ("an object without a deploy phase", "base",
     lambda o: find(o, "Service", "mysql")["metadata"]["labels"].pop("clairon.dev/deploy-phase")),
    ("an HPA fighting a fixed replica count", "base",
     lambda o: find(o, "Deployment", "web")["spec"].update(replicas=1)),
]

MONITORING_MUTANTS = [
    ("an alert without for", lambda o: find(o, "PrometheusRule", "clairon")["spec"]["groups"][0]["rules"][0].pop("for")),
    ("an alert without severity",
     lambda o: find(o, "PrometheusRule", "clairon")["spec"]["groups"][1]["rules"][0]["labels"].pop("severity")),
    ("an alert without description",
     lambda o: find(o, "PrometheusRule", "clairon")["spec"]["groups"][2]["rules"][0]["annotations"].pop("description")),
    ("a ServiceMonitor selecting no Service",
     lambda o: find(o, "ServiceMonitor", "clairon")["spec"]["selector"]["matchLabels"].update({"app.kubernetes.io/component": "svc"})),
    ("a ServiceMonitor on a port name the Services lack",
     lambda o: find(o, "ServiceMonitor", "clairon")["spec"]["endpoints"][0].update(port="metrics")),
    ("an unknown metric in a rule",
     lambda o: find(o, "PrometheusRule", "clairon")["spec"]["groups"][1]["rules"][0].update(
         expr="sum(rate(clairon_notification_total[5m])) > 1")),
    ("an alert with no unit test",
     lambda o: find(o, "PrometheusRule", "clairon")["spec"]["groups"][0]["rules"].append(
         {"alert": "ClaironUntested", "expr": "up == 0", "for": "5m", "labels": {"severity": "warning"},
          "annotations": {"summary": "s", "description": "d", "runbook_url": "docs/deployment.md#claironpodnotready"}})),
]


def run(args: list[str]) -> int:
    return subprocess.run([sys.executable, *args], cwd=d.ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode


def main() -> int:
    base = d.render("deploy/kubernetes/base")
    prod = d.render("deploy/kubernetes/overlays/production")
    mon = d.render("deploy/kubernetes/monitoring")
    survived = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = {n: os.path.join(tmp, f"{n}.yaml") for n in ("base", "production", "monitoring")}

        def write(name, objs):
            with open(paths[name], "w", encoding="utf-8") as f:
                yaml.safe_dump_all(objs, f)

        write("base", base)
        write("production", prod)
        write("monitoring", mon)
        consistency = ["tests/deploy/check_consistency.py", "--rendered", f"base={paths['base']}",
                       "--rendered", f"production={paths['production']}", "--monitoring", paths["monitoring"]]
        crds = ["tests/deploy/check_crds.py", "--monitoring", paths["monitoring"], "--platform", paths["base"],
                "--platform", paths["production"]]
        if run(consistency) != 0 or run(crds) != 0:
            print("test_checks_catch_errors: the unmodified manifests do not pass the checks")
            return 1
        for what, which, mutate in PLATFORM_MUTANTS:
            objs = copy.deepcopy({"base": base, "production": prod}[which])
            mutate(objs)
            write(which, objs)
            caught = run(consistency) != 0
            write(which, {"base": base, "production": prod}[which])
            print(f"  {'ok  ' if caught else 'MISS'} {what} ({which})")
            if not caught:
                survived.append(what)
        for what, mutate in MONITORING_MUTANTS:
            objs = copy.deepcopy(mon)
            mutate(objs)
            write("monitoring", objs)
            caught = run(crds) != 0 or run(consistency) != 0
            write("monitoring", mon)
            print(f"  {'ok  ' if caught else 'MISS'} {what} (monitoring)")
            if not caught:
                survived.append(what)
    total = len(PLATFORM_MUTANTS) + len(MONITORING_MUTANTS)
    print(f"test_checks_catch_errors: {total - len(survived)} of {total} mistakes caught")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())

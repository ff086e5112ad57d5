#!/usr/bin/env python3
"""Runs scripts/deploy-to-kubernetes.sh (not in --dry-run mode) against a fake
kubectl that records every call and keeps the objects applied, and checks what
the script did: the order of the phases and of the waits, that each object is
applied once with the right image, that the Secrets are created only when
missing, with generated values that agree with each other and never appear on
a command line, and that the URLs are printed.

    python3 tests/deploy/test_deploy_script.py
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap

import yaml

sys.dont_write_bytecode = True  # no __pycache__ in the work tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deploylib as d  # noqa: E402

FAKE_KUBECTL = textwrap.dedent(
    r'''
    #!/usr/bin/env python3
    # A stand-in for kubectl: logs each call (and what it applies) as JSON lines.
    import json, os, subprocess, sys, yaml
    state = os.environ["FAKE_STATE"]
    args = sys.argv[1:]
    def log(**kw):
        with open(os.path.join(state, "log.jsonl"), "a") as f:
            f.write(json.dumps(dict(argv=args, **kw)) + "\n")
    def opt(name):
        for i, a in enumerate(args):
            if a == name and i + 1 < len(args):
                return args[i + 1]
            if a.startswith(name + "="):
                return a.split("=", 1)[1]
    if args and args[0] == "-n":
        args = args[2:]
    verb = args[0] if args else ""
    secrets_file = os.path.join(state, "secrets.json")
    secrets = json.load(open(secrets_file)) if os.path.exists(secrets_file) else {}
    if verb == "kustomize":
        sys.exit(subprocess.call([sys.executable, os.path.join(os.environ["REPO"], "deploy", "render.py"), args[1]]))
    if verb == "cluster-info":
        log(); sys.exit(0)
    if verb == "apply":
        docs = [o for o in yaml.safe_load_all(open(opt("-f"))) if o]
        sel = opt("--selector")
        if sel:
            k, v = sel.split("=", 1)
            docs = [o for o in docs if (o["metadata"].get("labels") or {}).get(k) == v]
        log(applied=[[o["kind"], o["metadata"]["name"], [c.get("image") for c in
                      ((o.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers", [])]]
                     for o in docs])
        sys.exit(0)
    if verb == "get" and args[1] == "secret":
        log(); sys.exit(0 if args[2] in secrets else 1)
    if verb == "get" and args[1] == "crd":
        log(); sys.exit(0 if os.environ.get("FAKE_CRDS") else 1)
    if verb == "get" and args[1] == "ingress":
        path = opt("-o")
        log()
        if "spec.rules" in path: print("notifications.example.com", end="")
        elif "spec.tls" in path: print(os.environ.get("FAKE_TLS", ""), end="")
        else: print("203.0.113.10", end="")
        sys.exit(0)
    if verb == "create" and args[1] == "secret":
        name, env_file = args[3], opt("--from-env-file")
        data = dict(l.split("=", 1) for l in open(env_file).read().splitlines() if l)
        secrets[name] = data
        json.dump(secrets, open(secrets_file, "w"))
        log(); sys.exit(0)
    if verb == "create" and args[1] == "configmap":
        log()
        print("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: %s\n  namespace: notifications-platform\ndata: {}" % args[2])
        sys.exit(0)
    if verb == "label" and "--local" in args:
        log(); print(open(opt("-f")).read()); sys.exit(0)
    log()
    sys.exit(0)
    '''
).lstrip()


def run_deploy(tmp: str, *, existing_secrets: bool, crds: bool, overlay: str) -> tuple[list[dict], dict, str, int]:
    state = os.path.join(tmp, f"state-{existing_secrets}-{crds}-{overlay}")
    os.makedirs(state)
    kubectl = os.path.join(tmp, "kubectl")
    if not os.path.exists(kubectl):
        with open(kubectl, "w") as f:
            f.write(FAKE_KUBECTL)
        os.chmod(kubectl, 0o755)
    if existing_secrets:
        with open(os.path.join(state, "secrets.json"), "w") as f:
            json.dump({"clairon-secrets": {}, "mysql-credentials": {}, "kafka-ui-credentials": {}}, f)
    env = dict(os.environ, KUBECTL=kubectl, FAKE_STATE=state, REPO=d.ROOT, REGISTRY="reg.example.org/team",
               TAG="9.9.9", FAKE_TLS="notifications-example-com-tls" if overlay == "production" else "")
    env.pop("CLAIRON_JWT_SECRET", None)
    if crds:
        env["FAKE_CRDS"] = "1"
    p = subprocess.run(["bash", "scripts/deploy-to-kubernetes.sh", "--overlay", overlay], cwd=d.ROOT, env=env,
                       capture_output=True, text=True)
    log = []
    if os.path.exists(os.path.join(state, "log.jsonl")):
        with open(os.path.join(state, "log.jsonl")) as f:
            log = [json.loads(l) for l in f]
    secrets = {}
    if os.path.exists(os.path.join(state, "secrets.json")):
        with open(os.path.join(state, "secrets.json")) as f:
            secrets = json.load(f)
    return log, secrets, p.stdout + p.stderr, p.returncode


def index(log: list[dict], pred) -> int:
    for i, e in enumerate(log):
        if pred(e["argv"]):
            return i
    return -1


def main() -> int:
    c = d.Checks("test_deploy_script")
    with tempfile.TemporaryDirectory() as tmp:
        for overlay, existing, crds in (("base", False, False), ("production", True, True)):
            label = f"{overlay}, secrets {'present' if existing else 'missing'}, CRDs {'present' if crds else 'absent'}"
            print(f"- {label}")
            log, secrets, output, rc = run_deploy(tmp, existing_secrets=existing, crds=crds, overlay=overlay)
            if not c.check(rc == 0, f"{label}: the script succeeds", output[-2000:]):
                continue
            objs = d.render("deploy/kubernetes/base" if overlay == "base" else "deploy/kubernetes/overlays/production")
            expected = {(o["kind"], o["metadata"]["name"]) for o in objs if o["kind"] != "Secret"}
            applied = [(k, n, imgs) for e in log for k, n, imgs in e.get("applied", [])]
            platform = [(k, n) for k, n, _ in applied if (k, n) in expected or k == "Secret"]
            c.check(sorted(platform) == sorted(expected),
                    f"{label}: every object but the Secrets is applied exactly once",
                    str(sorted(set(platform) ^ expected)))
            c.check(not any(k == "Secret" for k, _, _ in applied), f"{label}: the placeholder Secrets are never applied")
            images = {i for k, n, imgs in applied for i in imgs if "clairon" in (i or "") and "kafka" not in (i or "")}
            c.check(images == {"reg.example.org/team/clairon:9.9.9"}, f"{label}: the services run $REGISTRY/clairon:$TAG",
                    str(images))
            phases = [a[a.index("--selector") + 1].split("=")[1] for a in (e["argv"] for e in log)
                      if "apply" in a and "--selector" in a]
            c.check(phases == ["namespace", "policy", "config", "data", "topics", "services", "edge"],
                    f"{label}: phases are applied in order", str(phases))

            def at(*words):
                return index(log, lambda a: all(w in a for w in words))

            c.check(at("clairon.dev/deploy-phase=config") < at("create", "secret") < at("clairon.dev/deploy-phase=data")
                    if not existing else at("create", "secret") == -1,
                    f"{label}: Secrets are created after the configuration and before the workloads"
                    if not existing else f"{label}: existing Secrets are left alone")
            c.check(at("clairon.dev/deploy-phase=data") < at("rollout", "statefulset/mysql")
                    < at("clairon.dev/deploy-phase=topics") and at("rollout", "statefulset/kafka")
                    < at("clairon.dev/deploy-phase=topics"), f"{label}: MySQL and Kafka are up before the topic Job")
            c.check(at("delete", "job", "kafka-topics") < at("clairon.dev/deploy-phase=topics")
                    < at("wait", "job/kafka-topics") < at("clairon.dev/deploy-phase=services"),
                    f"{label}: the topic Job is re-run and completes before the services")
            for dep in ("users", "notifications", "events", "logs", "web", "kafka-ui"):
                c.check(at("clairon.dev/deploy-phase=services") < at("rollout", f"deployment/{dep}")
                        < at("clairon.dev/deploy-phase=edge"), f"{label}: waits for deployment/{dep}")
            monitoring = [n for k, n, _ in applied if k in ("ServiceMonitor", "PrometheusRule")]
            dashboard = [n for k, n, _ in applied if k == "ConfigMap" and n == "clairon-grafana-dashboard"]
            if crds:
                c.check(sorted(monitoring) == ["clairon", "clairon"] and dashboard == ["clairon-grafana-dashboard"],
                        f"{label}: monitoring objects and the dashboard are applied")
            else:
                c.check(not monitoring and not dashboard and "CRDs not found" in output,
                        f"{label}: monitoring is skipped, with a note")
            scheme = "https" if overlay == "production" else "http"
            c.check(f"{scheme}://notifications.example.com/kafka-ui" in output and "203.0.113.10" in output,
                    f"{label}: prints the URLs and the Ingress address")
            if not existing:
                app, db, ui = secrets.get("clairon-secrets", {}), secrets.get("mysql-credentials", {}), secrets.get("kafka-ui-credentials", {})
                m = re.match(r"mysql://clairon:([^@]+)@mysql\.notifications-platform\.svc\.cluster\.local:3306/clairon$",
                             app.get("CLAIRON_DATABASE_URL", ""))
                c.check(bool(m) and m.group(1) == db.get("MYSQL_PASSWORD") and len(m.group(1)) >= 24,
                        f"{label}: the generated database password is MySQL's and long")
                c.check(len(app.get("CLAIRON_JWT_SECRET", "")) >= 32, f"{label}: the generated token secret has 32+ bytes")
                c.check(set(app) == {"CLAIRON_JWT_SECRET", "CLAIRON_DATABASE_URL", "CLAIRON_ADMIN_PASSWORD"},
                        f"{label}: no provider credentials are invented", str(sorted(app)))
                c.check(all(k.startswith("CLAIRON_") and k in d.settings() for k in app),
                        f"{label}: the Secret's keys are settings of the binary")
                secret_values = [v for s in (app, db, ui) for v in s.values() if len(v) >= 16]
                argv_text = json.dumps([e["argv"] for e in log])
                c.check(not any(v in argv_text for v in secret_values), f"{label}: no secret value on a kubectl command line")
                c.check(app.get("CLAIRON_ADMIN_PASSWORD", "-") in output and ui.get("SPRING_SECURITY_USER_PASSWORD", "-") in output,
                        f"{label}: the generated administrator and Kafka UI passwords are printed once")
                c.check(set(db) == {"MYSQL_ROOT_PASSWORD", "MYSQL_DATABASE", "MYSQL_USER", "MYSQL_PASSWORD"},
                        f"{label}: mysql-credentials has the keys the mysql image reads")
    return c.finish()


if __name__ == "__main__":
    sys.exit(main())

"""Shared helpers of the deployment checks (tests/deploy/check_*.py).

They read what the binary really does from the Rust sources (settings, ports,
routes, metric names) and compare the manifests with it.
"""

from __future__ import annotations

import glob
import os
import re
import sys

import yaml

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
NAMESPACE = "notifications-platform"
SERVICES = ["users", "notifications", "events", "logs", "web"]
CLAIRON_IMAGE_PLACEHOLDER = "registry.example.com/clairon:latest"

sys.dont_write_bytecode = True  # no __pycache__ in the work tree
sys.path.insert(0, os.path.join(ROOT, "deploy"))
import render as _render  # noqa: E402  (deploy/render.py)


def path(*parts: str) -> str:
    return os.path.join(ROOT, *parts)


def read(*parts: str) -> str:
    with open(path(*parts), encoding="utf-8") as f:
        return f.read()


def load_docs(file: str) -> list[dict]:
    with open(file, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def render(kustomization_dir: str) -> list[dict]:
    """The objects of a kustomization, as deploy/render.py renders them."""
    return _render.render(path(kustomization_dir))


class Checks:
    """Collects failures; prints one line per check."""

    def __init__(self, name: str):
        self.name = name
        self.failures: list[str] = []
        self.warnings: list[str] = []
        self.passed = 0

    def check(self, ok: bool, what: str, why: str = "") -> bool:
        if ok:
            self.passed += 1
        else:
            self.failures.append(f"{what}: {why}" if why else what)
            print(f"  FAIL {what}" + (f": {why}" if why else ""))
        return ok

    def warn(self, what: str) -> None:
        self.warnings.append(what)
        print(f"  WARN {what}")

    def finish(self) -> int:
        print(
            f"{self.name}: {self.passed} checks passed, {len(self.failures)} failed"
            + (f", {len(self.warnings)} warnings" if self.warnings else "")
        )
        return 1 if self.failures else 0


# ---------------------------------------------------------------- the binary


def clap_args() -> list[str]:
    """The bodies of every `#[arg(...)]` attribute of the clairon crate."""
    bodies = []
    for f in sorted(glob.glob(path("crates", "clairon", "src", "**", "*.rs"), recursive=True)):
        with open(f, encoding="utf-8") as fh:
            text = fh.read()
        bodies += re.findall(r"#\[arg\((.*?)\)\]\s*(?:pub\s+)?\w+\s*:", text, re.S)
    return bodies


def settings() -> dict[str, str | None]:
    """Every `CLAIRON_*` variable the binary reads, with its default (or None)."""
    out: dict[str, str | None] = {}
    for body in clap_args():
        m = re.search(r'env\s*=\s*"(CLAIRON_[A-Z0-9_]+)"', body)
        if not m:
            continue
        d = re.search(r'default_value(?:_t)?\s*=\s*("(?:[^"\\]|\\.)*"|[^,)\s]+)', body)
        default = None
        if d:
            v = d.group(1)
            default = v[1:-1] if v.startswith('"') else v.replace("_", "")
        out[m.group(1)] = default
    return out


def service_ports() -> dict[str, int]:
    """Default port of each service, from CLAIRON_<NAME>_ADDR's default."""
    s = settings()
    out = {}
    for name in SERVICES:
        addr = s.get(f"CLAIRON_{name.upper()}_ADDR")
        if addr and ":" in addr:
            out[name] = int(addr.rsplit(":", 1)[1])
    return out


def service_names() -> list[str]:
    """Values `--services` accepts (the ServiceName enum, in clap's kebab case)."""
    text = read("crates", "clairon", "src", "config.rs")
    m = re.search(r"enum\s+ServiceName\s*\{(.*?)\}", text, re.S)
    if not m:
        return []
    return [v.lower() for v in re.findall(r"\b([A-Z][A-Za-z]*)\s*,", m.group(1))]


def has_kafka_init_command() -> bool:
    text = read("crates", "clairon", "src", "config.rs")
    return bool(
        re.search(r"\bKafka\s*\(\s*KafkaCommand\s*\)", text)
        and re.search(r"enum\s+KafkaCommand\s*\{[^}]*\bInit\s*\(", text, re.S)
    )


def code_metrics() -> dict[str, str]:
    """Metric names registered through the `metrics` macros, with their kind."""
    out: dict[str, str] = {}
    for f in glob.glob(path("crates", "**", "*.rs"), recursive=True):
        if os.sep + "bench" + os.sep in f or os.sep + "e2e" + os.sep in f:
            continue
        with open(f, encoding="utf-8") as fh:
            text = fh.read()
        for kind, name in re.findall(r'\b(counter|gauge|histogram)!\(\s*"([A-Za-z_:][A-Za-z0-9_:]*)"', text):
            out[name] = kind
    return out


def histogram_bucket_matchers() -> list[tuple[str, str]]:
    """(kind, pattern) of each `Matcher::…` given buckets in crates/http/src/metrics.rs."""
    text = read("crates", "http", "src", "metrics.rs")
    return re.findall(r"Matcher::(Full|Prefix|Suffix)\(\s*\"([^\"]+)\"", text)


def has_buckets(metric: str) -> bool:
    for kind, pat in histogram_bucket_matchers():
        if (kind == "Full" and metric == pat) or (kind == "Prefix" and metric.startswith(pat)) or (
            kind == "Suffix" and metric.endswith(pat)
        ):
            return True
    return False


# ---------------------------------------------------------------- manifests


def by_kind(objs: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objs if o.get("kind") == kind}


def pod_spec(o: dict) -> dict | None:
    if o.get("kind") in ("Deployment", "StatefulSet", "Job", "DaemonSet", "ReplicaSet"):
        return o["spec"]["template"]["spec"]
    if o.get("kind") == "CronJob":
        return o["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return None


def workloads(objs: list[dict]) -> list[dict]:
    return [o for o in objs if pod_spec(o) is not None]


def template_labels(o: dict) -> dict:
    return o["spec"]["template"].get("metadata", {}).get("labels", {}) or {}


def selector_matches(selector: dict | None, labels: dict) -> bool:
    """Kubernetes label-selector semantics (matchLabels + matchExpressions)."""
    if selector is None:
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        k, op, vals = e["key"], e["operator"], e.get("values", [])
        if op == "In" and labels.get(k) not in vals:
            return False
        if op == "NotIn" and labels.get(k) in vals:
            return False
        if op == "Exists" and k not in labels:
            return False
        if op == "DoesNotExist" and k in labels:
            return False
    return True


def containers(spec: dict) -> list[dict]:
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])


def docs_anchors(markdown: str) -> set[str]:
    """GitHub-style anchors of the headings of a Markdown text."""
    anchors = set()
    for line in markdown.splitlines():
        m = re.match(r"^#{1,6}\s+(.*)$", line)
        if m:
            title = m.group(1).strip().lower()
            title = re.sub(r"[^\w\- ]", "", title)
            anchors.add(title.replace(" ", "-"))
    return anchors

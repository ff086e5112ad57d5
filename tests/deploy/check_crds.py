#!/usr/bin/env python3
"""Checks the Prometheus Operator objects, which kubernetes-validate has no schema for.

    python3 tests/deploy/check_crds.py [--monitoring FILE] [--platform FILE ...] [--extract-rules OUT]

ServiceMonitor: required fields, the selector picks exactly the five Clairon
Services of every platform rendering, the endpoint port exists on them and the
path is the one the binary serves. PrometheusRule: groups and rules are well
formed; every alert has expr, for, labels.severity and annotations (summary,
description, runbook_url pointing at a heading of docs/deployment.md), and a
unit test in tests/deploy/alerts.test.yaml. --extract-rules writes the rule
groups as a plain Prometheus rules file, for promtool.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

import yaml

sys.dont_write_bytecode = True  # no __pycache__ in the work tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deploylib as d  # noqa: E402

DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
SEVERITIES = {"critical", "warning", "info"}
SM_SPEC_KEYS = {"selector", "namespaceSelector", "endpoints", "jobLabel", "targetLabels", "podTargetLabels",
                "sampleLimit", "targetLimit", "labelLimit", "attachMetadata"}
SM_ENDPOINT_KEYS = {"port", "targetPort", "path", "scheme", "interval", "scrapeTimeout", "honorLabels",
                    "honorTimestamps", "metricRelabelings", "relabelings", "params", "tlsConfig",
                    "bearerTokenSecret", "basicAuth", "authorization", "followRedirects", "enableHttp2"}
ALERT_KEYS = {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
RECORD_KEYS = {"record", "expr", "labels"}


def seconds(duration: str) -> float:
    unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    return sum(float(n) * unit[u] for n, u in re.findall(r"([0-9]+)(ms|s|m|h|d|w|y)", duration))


def check_metadata(c: d.Checks, o: dict, kind: str) -> None:
    md = o.get("metadata") or {}
    c.check(o.get("apiVersion") == "monitoring.coreos.com/v1", f"{kind}: apiVersion monitoring.coreos.com/v1")
    c.check(bool(md.get("name")), f"{kind}: has a name")
    c.check(md.get("namespace") == d.NAMESPACE, f"{kind} {md.get('name')}: namespace {d.NAMESPACE}")
    c.check(bool((md.get("labels") or {}).get("release")),
            f"{kind} {md.get('name')}: has the `release` label Prometheus selects on")


def check_service_monitor(c: d.Checks, sm: dict, platforms: list[tuple[str, list[dict]]]) -> None:
    name = sm["metadata"]["name"]
    check_metadata(c, sm, "ServiceMonitor")
    spec = sm.get("spec") or {}
    c.check(set(spec) <= SM_SPEC_KEYS, f"ServiceMonitor {name}: only known spec fields", str(set(spec) - SM_SPEC_KEYS))
    sel = spec.get("selector") or {}
    c.check(bool(sel.get("matchLabels") or sel.get("matchExpressions")), f"ServiceMonitor {name}: has a selector")
    ns = (spec.get("namespaceSelector") or {}).get("matchNames") or []
    c.check(ns == [d.NAMESPACE], f"ServiceMonitor {name}: looks in {d.NAMESPACE}", str(ns))
    eps = spec.get("endpoints") or []
    c.check(bool(eps), f"ServiceMonitor {name}: has endpoints")
    metrics_rs = d.read("crates", "http", "src", "metrics.rs")
    for ep in eps:
        c.check(set(ep) <= SM_ENDPOINT_KEYS, f"ServiceMonitor {name}: only known endpoint fields", str(set(ep) - SM_ENDPOINT_KEYS))
        c.check(isinstance(ep.get("port"), str) and ep["port"], f"ServiceMonitor {name}: endpoint names a Service port")
        c.check(ep.get("path", "/metrics") == "/metrics" and '"/metrics"' in metrics_rs,
                f"ServiceMonitor {name}: scrapes /metrics, the path the services serve")
        for k in ("interval", "scrapeTimeout"):
            if k in ep:
                c.check(bool(DURATION.match(ep[k])), f"ServiceMonitor {name}: {k} is a duration", ep[k])
        if "interval" in ep and "scrapeTimeout" in ep:
            c.check(seconds(ep["scrapeTimeout"]) <= seconds(ep["interval"]),
                    f"ServiceMonitor {name}: scrapeTimeout <= interval")
    for label, objs in platforms:
        services = d.by_kind(objs, "Service")
        hits = {n for n, s in services.items()
                if d.selector_matches(sel, (s["metadata"].get("labels") or {})) and s["metadata"].get("namespace") in ns}
        c.check(hits == set(d.SERVICES), f"ServiceMonitor {name} selects exactly the five services ({label})", str(sorted(hits)))
        for n in hits:
            port_names = {p.get("name") for p in services[n]["spec"]["ports"]}
            for ep in eps:
                c.check(ep.get("port") in port_names, f"ServiceMonitor {name}: Service {n} has port {ep.get('port')} ({label})")


def check_prometheus_rule(c: d.Checks, pr: dict) -> list[str]:
    name = pr["metadata"]["name"]
    check_metadata(c, pr, "PrometheusRule")
    groups = (pr.get("spec") or {}).get("groups") or []
    c.check(bool(groups), f"PrometheusRule {name}: has groups")
    gnames = [g.get("name") for g in groups]
    c.check(all(gnames) and len(gnames) == len(set(gnames)), f"PrometheusRule {name}: group names are unique")
    anchors = d.docs_anchors(d.read("docs", "deployment.md")) if os.path.isfile(d.path("docs", "deployment.md")) else set()
    alerts = []
    for g in groups:
        c.check(set(g) <= {"name", "rules", "interval", "limit", "partial_response_strategy"},
                f"group {g.get('name')}: only known fields")
        c.check(bool(g.get("rules")), f"group {g.get('name')}: has rules")
        if "interval" in g:
            c.check(bool(DURATION.match(g["interval"])), f"group {g.get('name')}: interval is a duration")
        for r in g.get("rules") or []:
            if "record" in r:
                c.check(set(r) <= RECORD_KEYS and bool(r.get("expr")), f"recording rule {r['record']}: record and expr")
                continue
            a = r.get("alert", "?")
            alerts.append(a)
            c.check(bool(re.fullmatch(r"Clairon[A-Z][A-Za-z0-9]+", a)), f"alert {a}: named Clairon<CamelCase>")
            c.check(set(r) <= ALERT_KEYS, f"alert {a}: only known fields", str(set(r) - ALERT_KEYS))
            c.check(isinstance(r.get("expr"), str) and r["expr"].strip() != "", f"alert {a}: has expr")
            c.check(isinstance(r.get("for"), str) and bool(DURATION.match(r["for"])), f"alert {a}: has for (a duration)")
            labels = r.get("labels") or {}
            c.check(labels.get("severity") in SEVERITIES, f"alert {a}: labels.severity is one of {sorted(SEVERITIES)}",
                    str(labels.get("severity")))
            ann = r.get("annotations") or {}
            for k in ("summary", "description", "runbook_url"):
                c.check(bool(str(ann.get(k, "")).strip()), f"alert {a}: annotations.{k}")
            url = str(ann.get("runbook_url", ""))
            if url.startswith("docs/deployment.md#"):
                c.check(url.split("#", 1)[1] in anchors, f"alert {a}: runbook_url points at a heading of docs/deployment.md", url)
    c.check(len(alerts) == len(set(alerts)), f"PrometheusRule {name}: alert names are unique")
    return alerts


def check_unit_tests(c: d.Checks, alerts: list[str]) -> None:
    with open(d.path("tests", "deploy", "alerts.test.yaml"), encoding="utf-8") as f:
        tests = yaml.safe_load(f)
    c.check(tests.get("rule_files") == ["clairon.rules.yaml"], "alerts.test.yaml loads clairon.rules.yaml")
    firing, silent = set(), set()
    for t in tests.get("tests") or []:
        for a in t.get("alert_rule_test") or []:
            (firing if a.get("exp_alerts") else silent).add(a.get("alertname"))
    for a in alerts:
        c.check(a in firing, f"alert {a}: a unit test expects it to fire")
    unknown = (firing | silent) - set(alerts)
    c.check(not unknown, "alerts.test.yaml tests only existing alerts", str(sorted(unknown)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--monitoring", metavar="FILE", help="the rendered deploy/kubernetes/monitoring")
    ap.add_argument("--platform", action="append", default=[], metavar="FILE", help="a rendered platform kustomization")
    ap.add_argument("--extract-rules", metavar="OUT", help="write the PrometheusRule groups as a rules file")
    args = ap.parse_args()

    c = d.Checks("check_crds")
    objs = d.load_docs(args.monitoring) if args.monitoring else d.render("deploy/kubernetes/monitoring")
    platforms = [(os.path.basename(p), d.load_docs(p)) for p in args.platform] or [
        ("base", d.render("deploy/kubernetes/base")),
        ("production", d.render("deploy/kubernetes/overlays/production")),
    ]
    sms = [o for o in objs if o.get("kind") == "ServiceMonitor"]
    prs = [o for o in objs if o.get("kind") == "PrometheusRule"]
    c.check(len(sms) == 1 and len(prs) == 1, "one ServiceMonitor and one PrometheusRule")
    others = [o.get("kind") for o in objs if o.get("kind") not in ("ServiceMonitor", "PrometheusRule")]
    c.check(not others, "the monitoring kustomization holds only Prometheus Operator objects", str(others))
    for sm in sms:
        check_service_monitor(c, sm, platforms)
    alerts = []
    for pr in prs:
        alerts += check_prometheus_rule(c, pr)
    check_unit_tests(c, alerts)
    if args.extract_rules and prs:
        with open(args.extract_rules, "w", encoding="utf-8") as f:
            yaml.safe_dump({"groups": [g for pr in prs for g in pr["spec"]["groups"]]}, f, sort_keys=False)
    return c.finish()


if __name__ == "__main__":
    sys.exit(main())

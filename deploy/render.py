#!/usr/bin/env python3
"""Renders a kustomization directory without kubectl, for machines that have none.

It understands the subset of kustomize that deploy/kubernetes uses, and refuses
anything else rather than render it wrongly:

  resources:  YAML files and directories holding a kustomization.yaml
  namespace:  set on every namespaced object
  images:     name -> newName / newTag
  patches:    `- path: file.yaml` strategic-merge patches, matched on kind + name

Strategic merge follows Kubernetes' rules for the fields these patches touch:
maps merge key by key, a null value deletes the key, lists of containers, env,
volumes and ports merge on their merge key (the patch's items first, then the
others, as kustomize orders them), and any other list is replaced.

    python3 deploy/render.py deploy/kubernetes/overlays/production > all.yaml

`scripts/check-deploy.sh` compares this output with `kubectl kustomize` when
kubectl is present, so the two stay equivalent. Needs PyYAML.
"""

from __future__ import annotations

import copy
import os
import sys

import yaml

SUPPORTED_KEYS = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}

# Kinds that are not namespaced (only those a kustomization here may hold).
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "IngressClass",
}

# Strategic-merge keys of the list fields the patches may touch.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "envFrom": None,  # replaced, as kustomize does (no merge key)
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
}

# kustomize's legacy output order (the part of it that matters here).
ORDER = [
    "Namespace",
    "ResourceQuota",
    "StorageClass",
    "CustomResourceDefinition",
    "ServiceAccount",
    "PodSecurityPolicy",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
    "ConfigMap",
    "Secret",
    "Endpoints",
    "Service",
    "LimitRange",
    "PriorityClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "Deployment",
    "StatefulSet",
    "CronJob",
    "PodDisruptionBudget",
]
LAST = ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]


class RenderError(Exception):
    pass


def load_docs(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def merge(base, patch, field: str | None = None):
    """Strategic merge of `patch` into `base` (both already parsed)."""
    if isinstance(patch, dict) and isinstance(base, dict):
        out = dict(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = merge(out[k], v, k)
            else:
                out[k] = copy.deepcopy(v)
        return out
    if isinstance(patch, list) and isinstance(base, list):
        key = MERGE_KEYS.get(field or "")
        if key is None or not all(isinstance(i, dict) and key in i for i in base + patch):
            return copy.deepcopy(patch)
        # As kustomize does: the patch's items first, in the patch's order
        # (merged into their base item), then the base items it leaves alone.
        by_key = {i[key]: i for i in base}
        patched = {i[key] for i in patch}
        out = []
        for item in patch:
            if item.get("$patch") == "delete":
                continue
            if item[key] in by_key:
                out.append(merge(by_key[item[key]], item, None))
            else:
                out.append(copy.deepcopy(item))
        out.extend(copy.deepcopy(i) for i in base if i[key] not in patched)
        return out
    return copy.deepcopy(patch)


def set_images(obj, images: list[dict]) -> None:
    """Applies `images:` to every container and init container image."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in ("containers", "initContainers") and isinstance(v, list):
                for c in v:
                    if isinstance(c, dict) and "image" in c:
                        c["image"] = rewrite_image(c["image"], images)
            else:
                set_images(v, images)
    elif isinstance(obj, list):
        for v in obj:
            set_images(v, images)


def rewrite_image(image: str, images: list[dict]) -> str:
    name, tag, digest = image, None, None
    if "@" in name:
        name, digest = name.split("@", 1)
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = name.rsplit(":", 1)
    for rule in images:
        if rule.get("name") == name:
            name = rule.get("newName", name)
            if "digest" in rule:
                return f"{name}@{rule['digest']}"
            tag = rule.get("newTag", tag)
            break
    out = name
    if tag:
        out += f":{tag}"
    if digest and not tag:
        out += f"@{digest}"
    return out


def render(directory: str) -> list[dict]:
    kfile = os.path.join(directory, "kustomization.yaml")
    if not os.path.isfile(kfile):
        raise RenderError(f"{directory} has no kustomization.yaml")
    with open(kfile, encoding="utf-8") as f:
        k = yaml.safe_load(f) or {}
    unknown = set(k) - SUPPORTED_KEYS
    if unknown:
        raise RenderError(f"{kfile}: unsupported fields {sorted(unknown)} (use kubectl kustomize)")

    objects: list[dict] = []
    for res in k.get("resources", []):
        path = os.path.normpath(os.path.join(directory, res))
        if os.path.isdir(path):
            objects.extend(render(path))
        elif os.path.isfile(path):
            objects.extend(load_docs(path))
        else:
            raise RenderError(f"{kfile}: resource {res} not found")

    for p in k.get("patches", []):
        if set(p) != {"path"}:
            raise RenderError(f"{kfile}: only `- path: file` patches are supported, got {p}")
        for patch in load_docs(os.path.join(directory, p["path"])):
            kind, name = patch.get("kind"), patch.get("metadata", {}).get("name")
            hits = [
                n
                for n, o in enumerate(objects)
                if o.get("kind") == kind and o.get("metadata", {}).get("name") == name
            ]
            if len(hits) != 1:
                raise RenderError(f"patch {p['path']}: {kind}/{name} matches {len(hits)} objects")
            objects[hits[0]] = merge(objects[hits[0]], patch)

    if "namespace" in k:
        for o in objects:
            if o.get("kind") not in CLUSTER_SCOPED:
                o.setdefault("metadata", {})["namespace"] = k["namespace"]
    if k.get("images"):
        for o in objects:
            set_images(o, k["images"])
    return objects


def sort_key(o: dict):
    kind = o.get("kind", "")
    if kind in ORDER:
        rank = ORDER.index(kind)
    elif kind in LAST:
        rank = len(ORDER) + 1 + LAST.index(kind)
    else:
        rank = len(ORDER)
    md = o.get("metadata", {})
    return (rank, kind, md.get("namespace", ""), md.get("name", ""))


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] in ("-h", "--help"):
        print("usage: render.py KUSTOMIZATION_DIR", file=sys.stderr)
        return 2
    try:
        objects = sorted(render(argv[1]), key=sort_key)
    except (RenderError, OSError, yaml.YAMLError) as e:
        print(f"render.py: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=True, default_flow_style=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""Enough of kustomize to build this repository's overlays without the binary.

Supports exactly what gateway/k8s_render.py writes: `resources` (files and directories),
`namespace`, `images` (name -> newName/newTag) and `patches` holding JSON 6902 operations
with a kind+name target. Anything else is refused, so a renderer change that needs more is
noticed here, not silently ignored. `test_kustomize_lite_matches_kubectl` keeps this honest
against the real kustomize wherever kubectl is installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
CLUSTER_SCOPED = {"Namespace"}


def build(directory: Path) -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - SUPPORTED
    if unsupported:
        raise NotImplementedError(f"{directory}: kustomization fields {sorted(unsupported)}")
    documents: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        path = directory / resource
        if path.is_dir():
            documents += build(path)
        else:
            documents += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for patch in kustomization.get("patches", []):
        operations = yaml.safe_load((directory / patch["path"]).read_text())
        target = patch["target"]
        matched = [
            doc for doc in documents
            if doc["kind"] == target["kind"] and doc["metadata"]["name"] == target["name"]
        ]
        if not matched:
            raise LookupError(f"{directory}: patch {patch['path']} matches nothing")
        for doc in matched:
            for operation in operations:
                _apply(doc, operation)
    for image in kustomization.get("images", []):
        for doc in documents:
            for container in _containers(doc):
                name, _, tag = container["image"].partition(":")
                if name == image["name"]:
                    container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
    if "namespace" in kustomization:
        for doc in documents:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = kustomization["namespace"]
    return documents


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Containers where kustomize's image transformer looks for built-in workloads."""
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return spec.get("containers", []) + spec.get("initContainers", [])


def _apply(doc: dict[str, Any], operation: dict[str, Any]) -> None:
    *parents, last = [
        part.replace("~1", "/").replace("~0", "~") for part in operation["path"].lstrip("/").split("/")
    ]
    node: Any = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    key: Any = int(last) if isinstance(node, list) and last != "-" else last
    if operation["op"] == "add" and isinstance(node, list):
        node.insert(len(node) if key == "-" else key, operation["value"])
    elif operation["op"] in ("add", "replace"):
        node[key] = operation["value"]
    elif operation["op"] == "remove":
        del node[key]
    else:
        raise NotImplementedError(f"JSON patch op {operation['op']!r}")

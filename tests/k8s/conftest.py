"""Shared fixtures: the rendered tree, and each overlay assembled as kustomize would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli import default_config
from gateway.config import load_config
from gateway.k8s_render import render

from . import kustomize

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
OVERLAYS = ("cpu-only", "gpu")


@pytest.fixture(scope="session")
def config():
    return load_config(default_config())


@pytest.fixture(scope="session")
def rendered(config) -> dict[str, str]:
    return render(config)


@pytest.fixture(scope="session", params=OVERLAYS)
def overlay(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def built() -> dict[str, list[dict[str, Any]]]:
    """Each committed overlay, assembled: what `kubectl apply -k k8s/overlays/<name>` would send."""
    return {name: kustomize.build(K8S / "overlays" / name) for name in OVERLAYS}


@pytest.fixture(scope="session")
def documents(built, overlay) -> list[dict[str, Any]]:
    return built[overlay]


def find(documents: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in documents if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(documents: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = find(documents, kind, name)
    return found


def serve_config(documents: list[dict[str, Any]]) -> dict[str, Any]:
    return yaml.safe_load(one(documents, "RayService")["spec"]["serveConfigV2"])

"""A Kubernetes object as rendered: kind, name, and a body; serialised at the edge."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import yaml

__all__ = ["APP_LABEL", "Manifest", "component_labels", "dns_name", "dump_yaml"]

APP_LABEL: Final = "app.kubernetes.io/name"
_DNS_BAD: Final = re.compile(r"[^a-z0-9-]+")
_SUBDOMAIN_BAD: Final = re.compile(r"[^a-z0-9.-]+")


@dataclass(frozen=True, slots=True)
class Manifest:
    """One object. ``body`` holds every top-level key but apiVersion, kind and metadata."""

    api_version: str
    kind: str
    name: str
    body: Mapping[str, Any]
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    #: Which file of the rendered directory holds it.
    file: str = "dcnios.yaml"

    def to_dict(self, namespace: str | None = None) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": self.name}
        if namespace is not None:
            metadata["namespace"] = namespace
        if self.labels:
            metadata["labels"] = dict(self.labels)
        if self.annotations:
            metadata["annotations"] = dict(self.annotations)
        return {"apiVersion": self.api_version, "kind": self.kind, "metadata": metadata, **self.body}


def component_labels(component: str, instance: str) -> dict[str, str]:
    """The recommended labels; ``component`` is producer, consumer or monitoring."""
    return {
        APP_LABEL: "dcnios",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/instance": instance,
        "app.kubernetes.io/part-of": "dcnios",
        "app.kubernetes.io/managed-by": "dcnios-k8s",
    }


def dns_name(text: str, limit: int = 63, *, subdomain: bool = False) -> str:
    """A DNS-1123 label (or subdomain) for ``text``: lower-cased, other characters to '-', and a
    hash of ``text`` when that changed anything, so that two names never meet."""
    bad = _SUBDOMAIN_BAD if subdomain else _DNS_BAD
    name = bad.sub("-", text.lower()).strip("-.") or "x"
    if name == text and len(name) <= limit:
        return name
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip('-')}-{digest}"


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (a spec in a ConfigMap) as literal blocks, readable in the output."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value and not any(line != line.rstrip() for line in value.splitlines()) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump_yaml(documents: list[Any]) -> str:
    """YAML documents separated by ``---``, keys in the order given."""
    return yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, default_flow_style=False)

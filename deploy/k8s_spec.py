"""The spec one pod loads: a subset of the pipeline spec with every secret and file taken from Secrets.

A pod gets only its own part of the spec (the Kafka settings and its one source or consumer), so it
mounts only its own secrets. Nothing secret is written into the rendered spec: each secret field
becomes its ``*_file`` form pointing at a file mounted from a Secret key, and each file path (CA
bundles, client certificates, token files) points at a mounted key too. Secrets that have no
``*_file`` form (``sources[].auth.token``, secret ``librdkafka`` entries) become ``${ENV}``
references filled from the same Secret keys.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import yaml

from dcnios.secrets import Secret
from dcnios.spec import (
    DCacheAuth,
    Duration,
    OscarSpec,
    PipelineSpec,
    Rate,
    RegistrySpec,
    SourceSpec,
    SqsSpec,
    SslSpec,
    StompSpec,
    WebhookSpec,
)

__all__ = ["SECRETS_DIR", "SPEC_PATH", "FileKey", "PodSpecFile", "SecretEnv", "pod_spec_file"]

SPEC_DIR: Final = "/etc/dcnios/spec"
SPEC_PATH: Final = f"{SPEC_DIR}/spec.yaml"
SECRETS_DIR: Final = "/etc/dcnios/secrets"

#: Fields of the spec that hold a path to a file the process reads (not secrets themselves, except
#: token files and keys, but in a pod they come from a Secret all the same).
_FILE_FIELDS: Final[frozenset[tuple[type, str]]] = frozenset(
    {
        (SslSpec, "ca_location"),
        (SslSpec, "certificate_location"),
        (SslSpec, "key_location"),
        (RegistrySpec, "ca_location"),
        (DCacheAuth, "token_file"),
        (DCacheAuth, "cert"),
        (DCacheAuth, "key"),
        (SourceSpec, "ca_bundle"),
        (SqsSpec, "ca_bundle"),
        (OscarSpec, "ca_bundle"),
        (StompSpec, "ca_bundle"),
        (StompSpec, "cert"),
        (StompSpec, "key"),
    }
)
#: A webhook source listens on its pod's own address (127.0.0.1 would let nothing in), the one the
#: Deployment hands the metrics server in $DCNIOS_METRICS_ADDR; its Service names the port.
_POD_ADDRESS_FIELDS: Final[frozenset[tuple[type, str]]] = frozenset({(WebhookSpec, "host")})
_SAFE_KEY: Final = re.compile(r"[^-._a-zA-Z0-9]")


@dataclass(frozen=True, slots=True)
class FileKey:
    """A Secret key mounted as a file at ``path``; ``spec_key`` is the spec field it serves."""

    secret: str
    key: str
    path: str
    spec_key: str


@dataclass(frozen=True, slots=True)
class SecretEnv:
    """An environment variable from a Secret key, referenced as ``${name}`` in the rendered spec."""

    name: str
    secret: str
    key: str
    spec_key: str


@dataclass(frozen=True, slots=True)
class PodSpecFile:
    """The rendered spec text and what the pod must mount or export for it to load."""

    text: str
    files: tuple[FileKey, ...]
    env: tuple[SecretEnv, ...]


@dataclass
class _Collector:
    secret: str
    #: spec key -> (Secret name, key): credentials another Secret holds (Strimzi's user Secret).
    overrides: Mapping[str, tuple[str, str]]
    files: dict[str, FileKey] = field(default_factory=dict)
    env: dict[str, SecretEnv] = field(default_factory=dict)

    def file(self, spec_key: str) -> str:
        secret, key = self.overrides.get(spec_key, (self.secret, _SAFE_KEY.sub("-", spec_key)))
        path = f"{SECRETS_DIR}/{secret}/{key}"
        self.files.setdefault(spec_key, FileKey(secret, key, path, spec_key))
        return path

    def variable(self, spec_key: str) -> str:
        name = "DCNIOS_SECRET_" + re.sub(r"[^A-Z0-9]", "_", spec_key.upper())
        self.env.setdefault(spec_key, SecretEnv(name, self.secret, _SAFE_KEY.sub("-", spec_key), spec_key))
        return f"${{{name}}}"


def pod_spec_file(
    spec: PipelineSpec,
    *,
    secret: str,
    overrides: Mapping[str, tuple[str, str]] | None = None,
) -> PodSpecFile:
    """Render ``spec`` (already cut to one component) with secrets and files from Secret keys.

    Secret keys are named after the spec key they serve (``kafka.sasl.password``,
    ``sources.<name>.auth.password``, ``consumers.<name>.oscar.token``) in the Secret ``secret``,
    unless ``overrides`` maps that spec key to another Secret's key.
    """
    collector = _Collector(secret, overrides or {})
    document = {
        "kafka": _node(spec.kafka, "kafka", collector),
        "sources": [_node(s, f"sources.{s.name}", collector) for s in spec.sources],
        "consumers": [_node(c, f"consumers.{c.name}", collector) for c in spec.consumers],
    }
    document = {k: v for k, v in document.items() if v}
    text = "# Rendered by `dcnios k8s`: secrets and files come from mounted Secret keys.\n"
    text += yaml.safe_dump(document, sort_keys=False, default_flow_style=False)
    return PodSpecFile(text, tuple(collector.files.values()), tuple(collector.env.values()))


def _node(obj: Any, key: str, collector: _Collector) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        field_key = f"{key}.{f.name}"
        if value is None:
            continue
        if isinstance(value, Secret):
            if f.metadata.get("secret_file", True):
                out[f"{f.name}_file"] = collector.file(field_key)
            else:
                out[f.name] = collector.variable(field_key)
        elif (type(obj), f.name) in _FILE_FIELDS:
            out[f.name] = collector.file(field_key)
        elif (type(obj), f.name) in _POD_ADDRESS_FIELDS:
            out[f.name] = "${DCNIOS_METRICS_ADDR}"
        else:
            out[f.name] = _value(value, field_key, collector)
    return out


def _value(value: Any, key: str, collector: _Collector) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, Rate | type):
        return _node(value, key, collector)
    if isinstance(value, Rate):
        return value.text
    if isinstance(value, Duration):
        return float(value)
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return value.replace("$", "$$")  # the loader interpolates ${VAR}; $$ is a literal $
    if isinstance(value, tuple):
        return [_value(item, f"{key}[{i}]", collector) for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        return {
            k: collector.variable(f"{key}.{k}")
            if isinstance(v, Secret)
            else _value(v, f"{key}.{k}", collector)
            for k, v in value.items()
        }
    raise TypeError(f"{key}: cannot render {type(value).__name__}")

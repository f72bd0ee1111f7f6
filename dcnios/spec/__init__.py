"""The pipeline spec: YAML in, frozen typed objects out, every problem reported with path and line.

>>> spec = load_spec("examples/pipeline.yaml")   # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from dcnios.errors import ConfigError
from dcnios.spec._build import Builder, Duration, Rate
from dcnios.spec._schema import json_schema
from dcnios.spec._yaml import Located, load_located, parse_located
from dcnios.spec.model import (
    AnySourceSpec,
    ConsumerFilter,
    ConsumerSpec,
    DCacheAuth,
    KafkaSpec,
    NifiAuth,
    NifiSpec,
    NifiTruststore,
    OscarSpec,
    PipelineSpec,
    RegistrySpec,
    RetrySpec,
    RouteSpec,
    RucioSourceSpec,
    S3NotificationsSourceSpec,
    SandboxDCacheSpec,
    SandboxOscarSpec,
    SandboxServiceSpec,
    SandboxSpec,
    SaslSpec,
    SourceSpec,
    SqsSpec,
    SslSpec,
    StompSpec,
    TopicDefaults,
    TopicReaders,
    UpstreamTopicSpec,
    WebhookSpec,
    glob_match,
    source_kinds,
)
from dcnios.spec.workflow import RetryPolicy, StepSpec, TriggerSpec, WorkflowSpec

__all__ = [
    "AnySourceSpec",
    "ConsumerFilter",
    "ConsumerSpec",
    "DCacheAuth",
    "Duration",
    "KafkaSpec",
    "NifiAuth",
    "NifiSpec",
    "NifiTruststore",
    "OscarSpec",
    "PipelineSpec",
    "Rate",
    "RegistrySpec",
    "RetryPolicy",
    "RetrySpec",
    "RouteSpec",
    "RucioSourceSpec",
    "S3NotificationsSourceSpec",
    "SandboxDCacheSpec",
    "SandboxOscarSpec",
    "SandboxServiceSpec",
    "SandboxSpec",
    "SaslSpec",
    "SourceSpec",
    "SqsSpec",
    "SslSpec",
    "StepSpec",
    "StompSpec",
    "TopicDefaults",
    "TopicReaders",
    "TriggerSpec",
    "UpstreamTopicSpec",
    "WebhookSpec",
    "WorkflowSpec",
    "glob_match",
    "load_spec",
    "parse_spec",
    "source_kinds",
    "spec_json_schema",
]


def _build(doc: Located, source: str, env: Mapping[str, str] | None, base_dir: str) -> PipelineSpec:
    if not isinstance(doc.value, dict):
        raise ConfigError("the spec must be a mapping at the top level", source=source)
    builder = Builder(doc, env=env, base_dir=base_dir)
    spec: Any = builder.build(PipelineSpec, doc.value, "")
    if builder.problems:
        raise ConfigError(builder.problems, source=source)
    assert isinstance(spec, PipelineSpec)
    return spec


def load_spec(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> PipelineSpec:
    """Load and validate a spec file. Relative ``*_file`` paths resolve against its directory.

    Raises:
        ConfigError: listing every problem, each with its key path and line.
    """
    source = os.fspath(path)
    return _build(load_located(source), source, env, os.path.dirname(os.path.abspath(source)))


def parse_spec(text: str, env: Mapping[str, str] | None = None, *, base_dir: str = ".") -> PipelineSpec:
    """Validate spec text (see :func:`load_spec`)."""
    return _build(parse_located(text), "<spec>", env, base_dir)


def spec_json_schema() -> dict[str, Any]:
    """JSON Schema of the spec, for editors."""
    return json_schema(PipelineSpec)

"""dcnios: dCache storage events -> Avro on Kafka -> rate-controlled OSCAR invocations.

Stages: ``dcnios.producers`` (dCache SSE -> Kafka), ``dcnios.consumers`` (Kafka -> OSCAR),
``dcnios.deploy`` (NiFi). Shared core: ``dcnios.spec``, ``dcnios.codec``, ``dcnios.kafka``.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"

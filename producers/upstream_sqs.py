"""An upstream that is an SQS queue S3 sends a bucket's notifications to (through boto3).

A message is deleted only after the relay acknowledged it, i.e. after Kafka acknowledged its
records (or its ``.invalid`` report, or it was skipped: ``s3:TestEvent``). A message the relay
could not write is made visible again at once; one left behind by a crash comes back when its
visibility timeout ends. Either way S3's notification is delivered again, never lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, Final

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from dcnios.errors import RemoteError
from dcnios.producers.upstream import Delivery
from dcnios.spec import SqsSpec
from dcnios.storage_event import now_millis

__all__ = ["SqsUpstream", "sqs_client"]

logger = logging.getLogger(__name__)

#: DeleteMessageBatch and ChangeMessageVisibilityBatch take at most ten entries.
_BATCH: Final = 10
#: The longest wait between two receive attempts while SQS fails (a stop waits for it too).
_MAX_BACKOFF: Final = 5.0


def sqs_client(spec: SqsSpec) -> Any:
    """A boto3 SQS client for the spec (its own session: credentials never go to the environment)."""
    session = boto3.session.Session(
        aws_access_key_id=spec.access_key_id,
        aws_secret_access_key=spec.secret_access_key.reveal() if spec.secret_access_key else None,
        region_name=spec.region,
    )
    return session.client(
        "sqs",
        endpoint_url=spec.endpoint,
        verify=spec.ca_bundle if spec.ca_bundle is not None else True,
        config=Config(
            retries={"mode": "standard", "max_attempts": 5}, read_timeout=float(spec.wait_time) + 10
        ),
    )


class SqsUpstream:
    def __init__(self, spec: SqsSpec, source: str, *, client: Any = None) -> None:
        self.spec = spec
        self.source = source
        self.description = f"sqs queue {spec.queue_url}"
        self._client = client
        self._failures = 0

    def open(self) -> None:
        if self._client is None:
            self._client = sqs_client(self.spec)

    def _call(self, what: str, **kwargs: Any) -> Any:
        try:
            return getattr(self._client, what)(QueueUrl=self.spec.queue_url, **kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise RemoteError(f"source {self.source}: SQS {what} on {self.spec.queue_url}: {exc}") from exc

    def receive(self, timeout: float) -> Sequence[Delivery]:
        kwargs: dict[str, Any] = {
            "MaxNumberOfMessages": self.spec.max_messages,
            "WaitTimeSeconds": int(self.spec.wait_time),
            "MessageSystemAttributeNames": ["ApproximateReceiveCount"],
        }
        if self.spec.visibility_timeout is not None:
            kwargs["VisibilityTimeout"] = int(self.spec.visibility_timeout)
        try:
            answer = self._call("receive_message", **kwargs)
        except RemoteError as exc:
            # SQS unreachable or failing once boto's own retries are spent: the messages wait
            # there, so wait and ask again, instead of stopping every source of the process.
            self._failures += 1
            delay = min(_MAX_BACKOFF, 0.5 * 2 ** min(self._failures, 4))
            logger.warning(
                "source %s: cannot receive from SQS (%s); trying again in %.0fs", self.source, exc, delay
            )
            time.sleep(delay)
            return []
        self._failures = 0
        now = now_millis()
        return [
            Delivery(
                body=m["Body"].encode("utf-8"),
                origin=f"sqs {m['MessageId']}",
                attributes={k.lower(): str(v) for k, v in (m.get("Attributes") or {}).items()},
                handle=m["ReceiptHandle"],
                received_ms=now,
            )
            for m in answer.get("Messages", ())
        ]

    def acknowledge(self, deliveries: Sequence[Delivery]) -> None:
        for start in range(0, len(deliveries), _BATCH):
            chunk = deliveries[start : start + _BATCH]
            entries = [{"Id": str(i), "ReceiptHandle": d.handle} for i, d in enumerate(chunk)]
            answer = self._call("delete_message_batch", Entries=entries)
            for failed in answer.get("Failed", ()):
                # Relayed, but not deleted: SQS hands it out again, and the consumer's dedup drops it.
                logger.warning(
                    "source %s: SQS kept %s after it was relayed (%s): it will come again",
                    self.source,
                    chunk[int(failed["Id"])].origin,
                    failed.get("Message") or failed.get("Code"),
                )

    def release(self, deliveries: Sequence[Delivery], reason: str) -> None:
        logger.warning("source %s: %d SQS messages not relayed (%s)", self.source, len(deliveries), reason)
        for start in range(0, len(deliveries), _BATCH):
            chunk = deliveries[start : start + _BATCH]
            entries = [
                {"Id": str(i), "ReceiptHandle": d.handle, "VisibilityTimeout": 0} for i, d in enumerate(chunk)
            ]
            try:
                self._call("change_message_visibility_batch", Entries=entries)
            except RemoteError as exc:  # they come back when their visibility timeout ends anyway
                logger.warning("%s", exc)

    def close(self) -> None:
        pass

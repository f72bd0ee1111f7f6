"""S3 notification bodies as the stores write them, for the S3 source tests."""

from __future__ import annotations

import json
from urllib.parse import quote_plus


def minio_body(
    bucket: str,
    key: str,
    encoded_key: str | None = None,
    size: int = 1,
    *,
    event: str = "s3:ObjectCreated:Put",
    sequencer: str = "187E1C2A3B4C5D6E",
) -> bytes:
    """MinIO's event.Log as its Kafka target and webhook send it (field-2026-12.md §5.1), compact
    like Go's encoding/json."""
    record = {
        "eventVersion": "2.0",
        "eventSource": "minio:s3",
        "awsRegion": "",
        "eventTime": "2026-12-06T10:23:44.000Z",
        "eventName": event,
        "userIdentity": {"principalId": "minio"},
        "requestParameters": {"principalId": "minio", "region": "", "sourceIPAddress": "10.0.0.1"},
        "responseElements": {
            "x-amz-request-id": "16A0F0F1B7C44A2B",
            "x-minio-origin-endpoint": "http://m:9000",
        },
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "Config",
            "bucket": {
                "name": bucket,
                "ownerIdentity": {"principalId": "minio"},
                "arn": f"arn:aws:s3:::{bucket}",
            },
            "object": {
                "key": quote_plus(key) if encoded_key is None else encoded_key,
                "size": size,
                "eTag": "d41d8cd98f00b204e9800998ecf8427e",
                "contentType": "application/octet-stream",
                "userMetadata": {},
                "sequencer": sequencer,
            },
        },
        "source": {"host": "10.0.0.1", "port": "", "userAgent": "MinIO (linux; amd64) minio-go/v7"},
    }
    doc = {"EventName": event, "Key": f"{bucket}/{key}", "Records": [record]}
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def ceph_body(bucket: str, key: str, size: int = 1) -> bytes:
    """An RGW record as rgw_pubsub_s3_event::dump writes it: no s3: prefix, the key as it is."""
    record = {
        "eventVersion": "2.2",
        "eventSource": "ceph:s3",
        "awsRegion": "default",
        "eventTime": "2026-12-06T10:23:44.124724Z",
        "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "tester"},
        "requestParameters": {"sourceIPAddress": ""},
        "responseElements": {"x-amz-request-id": "503a4c37.5330.903595", "x-amz-id-2": "14d2-zone1-zg1"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "oscar-in",
            "bucket": {
                "name": bucket,
                "ownerIdentity": {"principalId": "tester"},
                "arn": f"arn:aws:s3:default::{bucket}",
                "id": "503a4c37.5332.38",
            },
            "object": {
                "key": key,
                "size": size,
                "eTag": "e1",
                "versionId": "",
                "sequencer": "F7E6D5C4B3A29180",
                "metadata": [],
                "tags": [],
            },
        },
        "eventId": "1575221657.102001.e1",
        "opaqueData": "",
    }
    return json.dumps({"Records": [record]}, separators=(",", ":"), ensure_ascii=False).encode()

"""`dcnios doctor`: a spec checked against the live dCache and OSCAR it names, one finding a check.

Nothing here changes anything: no job is created, no channel is opened. Each finding says what was
checked, what was found, and, when it failed, what to do about it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import requests

from dcnios.consumers.oscar import DCACHE_PROVIDER, OscarInvoker, service_input
from dcnios.consumers.record import staged_name
from dcnios.errors import DcniosError, OscarError
from dcnios.producers.dcache_api import DCacheClient
from dcnios.producers.upstream_sqs import sqs_client
from dcnios.producers.upstream_stomp import login_problem
from dcnios.spec import ConsumerSpec, PipelineSpec, RucioSourceSpec, S3NotificationsSourceSpec, SourceSpec

__all__ = ["Finding", "diagnose"]

Level = Literal["ok", "warn", "fail"]


@dataclass(frozen=True, slots=True)
class Finding:
    level: Level
    subject: str  # "consumer grayify", "source inbox"
    message: str
    fix: str = ""


def diagnose(spec: PipelineSpec) -> Iterator[Finding]:
    for source in spec.dcache_sources:
        yield from _source(source)
    for s3 in spec.sources:
        if isinstance(s3, S3NotificationsSourceSpec) and s3.sqs is not None:
            yield from _sqs(s3)
        if isinstance(s3, RucioSourceSpec):
            yield from _stomp(s3)
    for consumer in spec.consumers:
        yield from _consumer(spec, consumer)


def _sqs(source: S3NotificationsSourceSpec) -> Iterator[Finding]:
    """The queue answers with these credentials (ReceiveMessage needs the same rights as reading its
    attributes in every policy we know of; nothing is received here)."""
    assert source.sqs is not None
    subject = f"source {source.name}"
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    try:
        attrs = sqs_client(source.sqs).get_queue_attributes(
            QueueUrl=source.sqs.queue_url, AttributeNames=names
        )
    except Exception as exc:  # botocore's errors and connection failures: each one is the finding
        yield Finding(
            "fail",
            subject,
            f"SQS queue {source.sqs.queue_url} does not answer: {exc}",
            "check sqs.queue_url, sqs.region, the credentials and the queue policy",
        )
        return
    waiting = sum(int(attrs["Attributes"].get(n, 0)) for n in names)
    yield Finding("ok", subject, f"SQS queue {source.sqs.queue_url} answers ({waiting} messages in it)")


def _stomp(source: RucioSourceSpec) -> Iterator[Finding]:
    """The STOMP broker takes the source's login (TLS verified as the source verifies it)."""
    stomp = source.stomp
    where = f"STOMP broker {','.join(stomp.brokers)}"
    problem = login_problem(stomp)
    if problem is not None:
        yield Finding(
            "fail",
            f"source {source.name}",
            f"{where} refuses the connection or the login: {problem}",
            "check stomp.brokers, tls/ca_bundle, username/password (or cert/key) and stomp.vhost",
        )
        return
    yield Finding(
        "ok",
        f"source {source.name}",
        f"{where} accepts the login (the subscription to {stomp.destination} is not tried: it would take "
        "messages off the queue)",
    )


def _source(source: SourceSpec) -> Iterator[Finding]:
    subject = f"source {source.name}"
    client = DCacheClient(source)
    try:
        client.max_channel_timeout()
    except (DcniosError, requests.RequestException) as exc:
        yield Finding(
            "fail",
            subject,
            f"dCache events API at {source.endpoint} does not answer: {exc}",
            "check endpoint (https://<frontend>:3880/api/v1) and ca_bundle",
        )
        return
    yield Finding("ok", subject, f"dCache events API answers at {source.endpoint}")
    for path in source.paths:
        try:
            client.list_page(path, 0, 1)
        except (DcniosError, requests.RequestException) as exc:
            yield Finding(
                "fail",
                subject,
                f"cannot list {path}: {exc}",
                "check that the directory exists and that auth may read it",
            )
        else:
            yield Finding("ok", subject, f"{path} can be listed (needed to repair gaps)")


def _consumer(spec: PipelineSpec, cs: ConsumerSpec) -> Iterator[Finding]:
    subject = f"consumer {cs.name}"
    oscar = cs.oscar
    invoker = OscarInvoker(oscar, 1)
    if not invoker.healthy():
        yield Finding(
            "fail",
            subject,
            f"OSCAR at {oscar.endpoint} does not answer GET /health",
            "check oscar.endpoint and ca_bundle",
        )
        return
    yield Finding("ok", subject, f"OSCAR answers at {oscar.endpoint}")
    if oscar.mode == "async" and oscar.job_id == "deterministic":
        yield from _version(invoker, subject)
    definition = None
    if oscar.username is not None or oscar.oidc_token is not None:
        try:
            definition = invoker.service_definition()
        except OscarError as exc:
            fix = {
                401: "the cluster credentials are refused: check oscar.username/password or oidc_token",
                403: "these credentials may not see the service (visibility, allowed_users)",
                404: f"create service {oscar.service} (oscar-cli apply <fdl>) or fix oscar.service",
            }.get(exc.status or 0, "see the error")
            yield Finding("fail", subject, str(exc), fix)
            return
        yield Finding("ok", subject, f"service {oscar.service} exists and the credentials are accepted")
    yield from _token(invoker, subject)
    if cs.payload == "dcache" or (cs.payload == "native" and "dcache" in spec.topic_kinds(cs.topic)):
        yield from _input(spec, cs, definition, subject)
    if oscar.tracking or oscar.max_pending_jobs:
        yield from _listing(invoker, cs, subject)
    elif oscar.mode == "async":
        yield Finding(
            "warn",
            subject,
            "jobs are not followed: a 201 (the Job object exists) counts as done",
            "set job_id: deterministic (OSCAR >= 4.1) with username/password",
        )


def _version(invoker: OscarInvoker, subject: str) -> Iterator[Finding]:
    """X-Delegated-Job-ID names the job from OSCAR 4.1 on (oscar-api.md §0); older versions
    ignore it, so deterministic ids (and the jobs tracking follows) would not exist."""
    if invoker.spec.username is None and invoker.spec.oidc_token is None:
        return
    try:
        version = str(invoker.system_get("info").json().get("version", ""))
    except (OscarError, ValueError) as exc:
        yield Finding("warn", subject, f"cannot read OSCAR's version: {exc}")
        return
    found = re.match(r"v?(\d+)(?:\.(\d+))?", version)
    if found is None:
        yield Finding("warn", subject, f"OSCAR reports version {version!r}; job_id: deterministic needs 4.1")
        return
    if (int(found.group(1)), int(found.group(2) or 0)) < (4, 1):
        yield Finding(
            "fail",
            subject,
            f"OSCAR {version} ignores X-Delegated-Job-ID (4.1 and later honour it)",
            "upgrade OSCAR, or set job_id: random (jobs are then not followed)",
        )
    else:
        yield Finding("ok", subject, f"OSCAR {version} names jobs after X-Delegated-Job-ID")


def _token(invoker: OscarInvoker, subject: str) -> Iterator[Finding]:
    try:
        token, _ = invoker.token()
    except OscarError as exc:
        yield Finding("fail", subject, f"no service token: {exc}", "give oscar.token or cluster credentials")
        return
    try:
        response = invoker.session.get(
            f"{invoker.base}/system/services/{invoker.spec.service}/auth",
            headers={"Authorization": f"Bearer {token}"},
            timeout=(float(invoker.spec.connect_timeout), 30),
            allow_redirects=False,
        )
    except requests.RequestException as exc:
        yield Finding("fail", subject, f"GET /system/services/{invoker.spec.service}/auth: {exc}")
        return
    if response.status_code == 200:
        yield Finding("ok", subject, "the service token is accepted")
    elif response.status_code == 401:
        yield Finding(
            "fail",
            subject,
            "OSCAR refuses the service token (401)",
            "copy the token again (OSCAR <= 3.7 changes it on every service update), "
            "or give username/password so dcnios fetches it",
        )
    else:
        # OSCAR < 4 has no such endpoint; checking otherwise would create a job.
        yield Finding(
            "warn",
            subject,
            f"cannot check the token without creating a job "
            f"(GET .../auth answered {response.status_code}; OSCAR < 4?)",
        )


def _input(
    spec: PipelineSpec, cs: ConsumerSpec, definition: dict[str, object] | None, subject: str
) -> Iterator[Finding]:
    found = service_input(definition) if definition is not None else None
    if definition is not None and found is None:
        yield Finding(
            "fail",
            subject,
            f"service {cs.oscar.service} has no {DCACHE_PROVIDER} input: its "
            "supervisor cannot stage dCache files",
            f"add input: [{{storage_provider: {DCACHE_PROVIDER}, path: <dir>}}] to the FDL",
        )
        return
    if found is not None and cs.oscar.input_path is not None and found.path != cs.oscar.input_path:
        yield Finding(
            "fail",
            subject,
            f"oscar.input_path is {cs.oscar.input_path} but the service stages from {found.path}",
            "make them the same, or drop oscar.input_path",
        )
        return
    input_path = cs.oscar.input_path or (found.path if found is not None else None)
    if input_path is None:
        return
    yield Finding("ok", subject, f"the service stages dCache files from {input_path}")
    nested = cs.oscar.nested_names
    for source in spec.dcache_sources:
        if cs.topic not in {source.topic, *(r.topic for r in source.routes)}:
            continue
        for path in source.paths:
            probe = f"{path.rstrip('/')}/x"
            deeper = f"{path.rstrip('/')}/d/x"
            direct = staged_name(probe, input_path, nested=nested) is not None
            if not direct and staged_name(probe, input_path, nested=True) is not None:
                yield Finding(
                    "fail",
                    subject,
                    f"source {source.name} watches {path}, a sub-directory of {input_path}: every one "
                    "of its files goes to the DLQ (OSCAR's supervisor cannot stage nested names)",
                    "make the service's webdav.dcache input path the watched directory",
                )
            elif direct and source.recursive and staged_name(deeper, input_path, nested=nested) is None:
                yield Finding(
                    "warn",
                    subject,
                    f"source {source.name} watches {path} recursively: files below its sub-directories "
                    "go to the DLQ (OSCAR's supervisor cannot stage them)",
                    "point a service's input at each watched directory, use payload: record, or set "
                    "oscar.nested_names for a supervisor that stages nested names",
                )
            elif direct:
                yield Finding("ok", subject, f"files in {path} (source {source.name}) can be staged")
            else:
                yield Finding(
                    "fail",
                    subject,
                    f"source {source.name} watches {path}, outside {input_path}: "
                    "none of its files can be staged",
                    "make the service's webdav.dcache input path the watched directory",
                )


def _listing(invoker: OscarInvoker, cs: ConsumerSpec, subject: str) -> Iterator[Finding]:
    try:
        invoker.list_jobs()
    except OscarError as exc:
        yield Finding(
            "fail",
            subject,
            f"cannot list jobs: {exc}",
            "track_jobs and max_pending_jobs need GET /system/logs with cluster username/password",
        )
        return
    yield Finding("ok", subject, "the job listing is readable (tracking, max_pending_jobs)")

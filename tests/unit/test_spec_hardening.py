"""Hostile or broken spec input: every case ends in a ConfigError naming the key and line, soon,
without echoing a secret."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from test_spec import MINIMAL as BASE_SPEC

from dcnios import kafka as kafka_module
from dcnios.cli import main
from dcnios.errors import ConfigError, DCacheError
from dcnios.kafka import client_config, consumer_config, masked_config, producer_config
from dcnios.producers.dcache_api import DCacheClient
from dcnios.secrets import SECRET_FILE_LIMIT, Secret
from dcnios.spec import parse_spec
from dcnios.spec._build import Builder, spec_field
from dcnios.spec._yaml import MAX_ALIASED_NODES, MAX_SPEC_CHARS, parse_located

# The minimal spec of test_spec, with a token these tests replace.
MINIMAL = BASE_SPEC.replace('token: "t"', "token: TOKEN")
SECRET = "hunter2"


def error(text: str, env: dict[str, str] | None = None, base_dir: str = ".") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_spec(text, env=env or {}, base_dir=base_dir)
    return info.value


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail instead of hanging: the unbounded cases would otherwise run for minutes, or forever."""

    def expire(_signum: int, _frame: object) -> None:
        raise TimeoutError(f"still running after {seconds}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# -- 10: secrets with control characters, secrets that are not strings ---------------------------
@pytest.mark.parametrize("char", ["\n", "\r", "\x00", "\t", "\x1b", "\x7f", "\x85", "\x9f"])
def test_a_secret_with_a_control_character_is_refused_without_its_value(char: str) -> None:
    exc = error(MINIMAL.replace("TOKEN", '"${TOKEN}"'), env={"TOKEN": f"abc{char}{SECRET}"})
    assert [str(p) for p in exc.problems] == [
        "consumers[0].oscar.token: contains a control character (newline, NUL, DEL, ...), "
        "which no header can carry (the value is not shown) (line 11)"
    ]
    assert SECRET not in str(exc)


def test_a_secret_file_with_a_control_character_is_refused(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(f"abc\x00{SECRET}\n")
    exc = error(MINIMAL.replace("token: TOKEN", "token_file: token"), base_dir=str(tmp_path))
    assert [str(p) for p in exc.problems] == [
        "consumers[0].oscar.token_file: secret file 'token' contains a control character "
        "(newline, NUL, DEL, ...), which no header can carry (the value is not shown) (line 11)"
    ]
    assert SECRET not in str(exc)


def test_a_trailing_newline_of_a_secret_file_is_no_control_character(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(f"{SECRET}\r\n")
    spec = parse_spec(MINIMAL.replace("token: TOKEN", "token_file: token"), env={}, base_dir=str(tmp_path))
    assert spec.consumers[0].oscar.token == Secret(SECRET)


def test_a_dcache_token_file_is_checked_at_load_and_at_every_reread(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("tok\n")
    text = MINIMAL.replace(
        "    topic: dcache.events\nconsumers",
        f"    topic: dcache.events\n    auth: {{token_file: {token}}}\nconsumers",
    )
    client = DCacheClient(parse_spec(text, env={}).sources[0], session=requests.Session())
    token.write_text(f"tok\n{SECRET}\n")
    exc = error(text)
    assert [p.path for p in exc.problems] == ["sources[0].auth.token_file"]
    assert "control character" in str(exc) and SECRET not in str(exc)
    with pytest.raises(DCacheError, match="control character") as info:
        client._load_token()  # what a 401 triggers
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        ("2001-12-14t21:59:43.10-05:00", "datetime"),
        ("2001-12-14", "date"),
        ("!!binary aHVudGVyMg==", "bytes"),
    ],
)
def test_a_secret_that_is_not_a_string_is_not_shown(raw: str, kind: str) -> None:
    exc = error(MINIMAL.replace("TOKEN", raw))
    assert [str(p) for p in exc.problems] == [
        f"consumers[0].oscar.token: expected a string, got {kind} (line 11)"
    ]


def test_validate_does_not_print_a_non_string_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(MINIMAL.replace("TOKEN", "!!binary aHVudGVyMg=="))  # base64 of hunter2
    assert main(["validate", "-c", str(spec)]) == 2
    captured = capsys.readouterr()
    assert "consumers[0].oscar.token: expected a string, got bytes (line 11)" in captured.err
    assert SECRET not in captured.out + captured.err


def test_a_bad_tagged_value_names_neither_the_value_nor_a_wrong_line() -> None:
    exc = error(MINIMAL.replace("TOKEN", f"!!bool {SECRET}"))
    assert [str(p) for p in exc.problems] == ["consumers[0].oscar.token: not a valid !!bool value (line 11)"]
    exc = error(MINIMAL.replace("TOKEN", "!!python/object:os.system x"))
    assert [p.path for p in exc.problems] == ["consumers[0].oscar.token"]
    assert "could not determine a constructor" in str(exc) and "(line 11)" in str(exc)
    exc = error(MINIMAL + "    concurrency: " + "9" * 5000 + "\n")
    assert [str(p) for p in exc.problems] == ["consumers[0].concurrency: not a valid !!int value (line 12)"]


# -- 13: TLS checks turned off; secrets among the librdkafka pass-through ---------------------------
PEM_KEY = f"-----BEGIN PRIVATE KEY-----\nMIIE{SECRET}\n-----END PRIVATE KEY-----\n"


@pytest.mark.parametrize("value", ['"false"', "false", "'0'", "F"])
def test_disabled_certificate_verification_warns_once(
    value: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kafka_module, "_warned", set())
    text = (
        f'kafka: {{bootstrap_servers: "a:1", librdkafka: {{enable.ssl.certificate.verification: {value}}}}}'
    )
    spec = parse_spec(text, env={})
    with caplog.at_level(logging.WARNING, logger="dcnios.kafka"):
        producer_config(spec.kafka)
        consumer_config(spec.kafka, "g")
        client_config(spec.kafka)
    warnings = [r for r in caplog.records if "enable.ssl.certificate.verification" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "not verified" in warnings[0].getMessage()


def test_enabled_certificate_verification_does_not_warn(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kafka_module, "_warned", set())
    spec = parse_spec(
        'kafka: {bootstrap_servers: "a:1", librdkafka: {enable.ssl.certificate.verification: true}}\n'
    )
    with caplog.at_level(logging.WARNING, logger="dcnios.kafka"):
        producer_config(spec.kafka)
    assert not caplog.records


def test_a_consumer_override_turning_hostname_checks_off_warns(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kafka_module, "_warned", set())
    spec = parse_spec('kafka: {bootstrap_servers: "a:1"}\n', env={})
    with caplog.at_level(logging.WARNING, logger="dcnios.kafka"):
        consumer_config(spec.kafka, "g", **{"ssl.endpoint.identification.algorithm": "none"})
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "ssl.endpoint.identification.algorithm" in caplog.records[0].getMessage()


def test_secrets_in_the_librdkafka_pass_through_are_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = {
        "ssl.key.pem": PEM_KEY,
        "ssl.keystore.password": f"ks-{SECRET}",
        "sasl.oauthbearer.client.secret": f"cs-{SECRET}",
        "ssl.certificate.pem": f"-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n{PEM_KEY}",
    }
    block = "".join(f"    {key}: ${{{key.replace('.', '_').upper()}}}\n" for key in settings)
    env = {key.replace(".", "_").upper(): value for key, value in settings.items()}
    text = (
        f'kafka:\n  bootstrap_servers: "a:1"\n  security_protocol: SSL\n  librdkafka:\n{block}'
        f"  client_id: c\nconsumers:\n  - name: g\n    topic: t\n"
        f"    oscar: {{endpoint: 'https://o', service: s, username: u, password: p}}\n"
        f"    librdkafka:\n      sasl.oauthbearer.client.secret: cc-{SECRET}\n"
        f"      ssl.certificate.pem: '-----BEGIN CERTIFICATE-----'\n"
    )
    spec = parse_spec(text, env=env)
    assert SECRET not in repr(spec) and SECRET not in str(spec.kafka)
    assert spec.consumers[0].librdkafka["ssl.certificate.pem"] == "-----BEGIN CERTIFICATE-----"  # public
    conf = consumer_config(spec.kafka, "g", **spec.consumers[0].librdkafka)
    assert conf["ssl.key.pem"] == PEM_KEY and conf["sasl.oauthbearer.client.secret"] == f"cc-{SECRET}"
    assert SECRET not in str(masked_config(conf))
    assert isinstance(spec.kafka.librdkafka["ssl.certificate.pem"], Secret)  # it carries a private key too
    assert masked_config(client_config(spec.kafka))["ssl.certificate.pem"] == "***"
    path = tmp_path / "s.yaml"
    path.write_text(text)
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # `dcnios validate` interpolates from the real environment
    assert main(["validate", "-c", str(path)]) == 0
    assert SECRET not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("where", "key", "home"),
    [
        ("kafka", "ssl.key.password", "kafka.ssl.key_password"),
        ("consumers[0]", "sasl.password", "kafka.sasl.password"),
    ],
)
def test_a_secret_with_a_spec_field_of_its_own_is_refused_in_the_pass_through(
    where: str, key: str, home: str
) -> None:
    text = MINIMAL.replace("TOKEN", "t")
    if where == "kafka":
        text = text.replace('"127.0.0.1:9092"', f'"127.0.0.1:9092"\n  librdkafka: {{{key}: x}}')
    else:
        text += f"    librdkafka: {{{key}: x}}\n"
    exc = error(text)
    assert [p.path for p in exc.problems] == [f"{where}.librdkafka.{key}"]
    assert f"put secrets in {home}" in str(exc)


# -- 14: bounded loading ---------------------------------------------------------------------------
def billion_laughs(levels: int) -> str:
    """9**levels strings in a few hundred bytes."""
    text = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for level in range(1, levels):
        name, previous = chr(ord("a") + level), chr(ord("a") + level - 1)
        text += f"{name}: &{name} [{','.join([f'*{previous}'] * 9)}]\n"
    return text


@pytest.mark.parametrize("levels", [9, 10])
def test_alias_expansion_is_bounded(levels: int) -> None:
    text = billion_laughs(levels)
    with deadline(10):
        exc = error(text)
    assert len(exc.problems) == 1
    problem = exc.problems[0]
    assert problem.message == f"aliases expand to more than {MAX_ALIASED_NODES} nodes"
    assert problem.line is not None and 1 < problem.line <= levels


def test_aliases_within_the_budget_still_work() -> None:
    text = "x-oscar: &oscar {endpoint: 'https://o', service: s, token: t, input_path: /d}\n"
    text += "consumers:\n" + "".join(f"  - {{name: c{i}, topic: t{i}, oscar: *oscar}}\n" for i in range(50))
    doc = parse_located(text)
    assert doc.value["consumers"][49]["oscar"]["service"] == "s"


@pytest.mark.parametrize(
    ("text", "path", "line"),
    [("a: &a [*a]\n", "a[0]", 1), ("k: 1\nb: &b\n  c: [1, {d: *b}]\n", "b.c[1].d", 3)],
)
def test_a_recursive_alias_names_its_line(text: str, path: str, line: int) -> None:
    exc = error(text)
    assert [str(p) for p in exc.problems] == [
        f"{path}: recursive alias: the node contains itself (line {line})"
    ]


def test_deep_nesting_names_its_line() -> None:
    exc = error("kafka: {}\nsources: " + "[" * 5000 + "]" * 5000 + "\n")
    assert len(exc.problems) == 1
    assert (
        exc.problems[0].message.startswith("malformed YAML: nested deeper than") and exc.problems[0].line == 2
    )


def test_a_spec_larger_than_the_limit_is_refused() -> None:
    exc = error("kafka: {}\n#" + "x" * MAX_SPEC_CHARS + "\n")
    assert "larger than" in str(exc)


def file_spec(path: Path | str) -> str:
    return MINIMAL.replace("token: TOKEN", f"token_file: '{path}'")


def test_a_secret_file_that_is_not_a_regular_file_is_refused() -> None:
    for device in ("/dev/zero", "/dev/null", "/"):
        with deadline(10):
            exc = error(file_spec(device))
        assert [str(p) for p in exc.problems] == [
            f"consumers[0].oscar.token_file: cannot read secret file '{device}': "
            "is not a regular file (line 11)"
        ]


def test_a_fifo_secret_file_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with deadline(10):
        exc = error(file_spec(fifo))
    assert "is not a regular file" in str(exc) and str(fifo) in str(exc)


def test_a_large_secret_file_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_text("x" * (SECRET_FILE_LIMIT + 1))
    exc = error(file_spec(big))
    assert [str(p) for p in exc.problems] == [
        f"consumers[0].oscar.token_file: cannot read secret file '{big}': is larger than 64 KiB (line 11)"
    ]
    big.write_text("x" * SECRET_FILE_LIMIT)
    assert parse_spec(file_spec(big), env={}).consumers[0].oscar.token == Secret("x" * SECRET_FILE_LIMIT)


def test_a_binary_secret_file_names_field_and_path(tmp_path: Path) -> None:
    binary = tmp_path / "key.der"
    binary.write_bytes(b"ok\xff\xfe")
    exc = error(file_spec(binary))
    assert [str(p) for p in exc.problems] == [
        f"consumers[0].oscar.token_file: cannot read secret file '{binary}': "
        "is not UTF-8 text (byte 2) (line 11)"
    ]


@pytest.mark.parametrize(
    ("edit", "path", "line"),
    [
        (("topic: dcache.events\nconsumers", f"topic: {'s' * 249}\nconsumers"), "sources[0].topic", 7),
        (("topic: dcache.events\n    oscar", f"topic: {'c' * 249}\n    oscar"), "consumers[0].topic", 10),
        (
            ('"127.0.0.1:9092"', f'"127.0.0.1:9092"\n  internal_prefix: {"p" * 240}'),
            "kafka.internal_prefix",
            3,
        ),
    ],
)
def test_derived_topic_names_are_checked_against_kafkas_limit(
    edit: tuple[str, str], path: str, line: int
) -> None:
    exc = error(MINIMAL.replace("TOKEN", "t").replace(*edit))
    assert [(p.path, p.line) for p in exc.problems] == [(path, line)]
    assert "characters long; Kafka allows 249" in exc.problems[0].message


def test_a_dead_letter_topic_of_exactly_249_characters_is_fine() -> None:
    text = MINIMAL.replace("TOKEN", "t").replace(
        "topic: dcache.events\n    oscar", f"topic: {'c' * 245}\n    oscar"
    )
    assert len(parse_spec(text, env={}).consumers[0].dead_letter_topic or "") == 249


@pytest.mark.parametrize(
    ("setting", "path"),
    [
        (
            "    oscar: {endpoint: 'https://o', service: s, token: t, input_path: /d, timeout: .inf}",
            "oscar.timeout",
        ),
        ("    dedup_window: .nan", "dedup_window"),
        ("    drain_timeout: -.inf", "drain_timeout"),
        ("    drain_timeout: 1.0e+999", "drain_timeout"),
        ("    drain_timeout: 99999999999999999999d", "drain_timeout"),
        ("    drain_timeout: 366d", "drain_timeout"),
        ("    drain_timeout: 100000000000000000000000", "drain_timeout"),
        (f"    drain_timeout: {'9' * 400}", "drain_timeout"),
        (f"    drain_timeout: {'9' * 400}s", "drain_timeout"),
        (f"    rate: {'9' * 400}/s", "rate"),
    ],
)
def test_durations_and_rates_are_finite_and_bounded(setting: str, path: str) -> None:
    text = "consumers:\n  - name: g\n    topic: t\n" + setting + "\n"
    if "oscar:" not in setting:
        text += "    oscar: {endpoint: 'https://o', service: s, token: t, input_path: /d}\n"
    exc = error(text)
    assert [(p.path, p.line) for p in exc.problems] == [(f"consumers[0].{path}", 4)]


def test_a_year_is_the_longest_duration() -> None:
    text = (
        "consumers:\n  - name: g\n    topic: t\n    dedup_window: 365d\n    drain_timeout: 31536000\n"
        "    oscar: {endpoint: 'https://o', service: s, token: t, input_path: /d}\n"
    )
    consumer = parse_spec(text, env={}).consumers[0]
    assert consumer.dedup_window == consumer.drain_timeout == 365 * 86400


@dataclass(frozen=True, slots=True)
class Gauge:
    level: float = spec_field(0.0, doc="a number")


@pytest.mark.parametrize("raw", [".inf", "-.inf", ".nan", "1.0e+999", "9" * 400])
def test_float_fields_are_finite(raw: str) -> None:
    doc = parse_located(f"level: {raw}\n")
    builder = Builder(doc, env={})
    builder.build(Gauge, doc.value, "")
    assert [(p.path, p.line) for p in builder.problems] == [("level", 1)]
    assert "finite" in builder.problems[0].message

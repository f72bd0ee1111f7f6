from __future__ import annotations

import pytest

from dcnios.errors import ConfigError
from dcnios.kafka import client_config, consumer_config, masked_config, producer_config
from dcnios.spec import parse_spec

HEAD = "sources: []\n"


def kafka(block: str) -> dict[str, str | int | float | bool]:
    spec = parse_spec("kafka:\n" + block, env={"PW": "pw"})
    return client_config(spec.kafka)


def test_plaintext() -> None:
    conf = kafka('  bootstrap_servers: "a:1,b:2"\n')
    assert conf == {"bootstrap.servers": "a:1,b:2", "client.id": "dcnios", "security.protocol": "PLAINTEXT"}


def test_ssl_with_mtls(tmp_path: object) -> None:
    conf = kafka(
        '  bootstrap_servers: "a:1"\n  security_protocol: SSL\n'
        "  ssl: {key_password: '${PW}', verify_hostname: false}\n"
    )
    assert conf["security.protocol"] == "SSL"
    assert conf["ssl.key.password"] == "pw"
    assert conf["ssl.endpoint.identification.algorithm"] == "none"


def test_sasl_plaintext_scram() -> None:
    conf = kafka(
        '  bootstrap_servers: "a:1"\n  security_protocol: SASL_PLAINTEXT\n'
        "  sasl: {mechanism: SCRAM-SHA-512, username: u, password: '${PW}'}\n"
    )
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert (conf["sasl.username"], conf["sasl.password"]) == ("u", "pw")
    assert "ssl.ca.location" not in conf


def test_sasl_ssl_and_passthrough_precedence() -> None:
    conf = kafka(
        '  bootstrap_servers: "a:1"\n  security_protocol: SASL_SSL\n'
        "  sasl: {mechanism: PLAIN, username: u, password: x}\n"
        "  ssl: {verify_hostname: true}\n"
        "  librdkafka: {security.protocol: PLAINTEXT, socket.keepalive.enable: true}\n"
    )
    assert conf["security.protocol"] == "SASL_SSL"  # the spec key wins over the pass-through
    assert conf["socket.keepalive.enable"] == "true"
    assert conf["ssl.endpoint.identification.algorithm"] == "https"


def test_secrets_masked_for_logs() -> None:
    conf = kafka(
        '  bootstrap_servers: "a:1"\n  security_protocol: SASL_SSL\n'
        "  sasl: {mechanism: PLAIN, username: u, password: hunter2}\n"
    )
    assert "hunter2" not in str(masked_config(conf))


def test_producer_and_consumer_defaults_lose_nothing() -> None:
    spec = parse_spec('kafka: {bootstrap_servers: "a:1"}\n', env={})
    prod = producer_config(spec.kafka)
    assert (prod["enable.idempotence"], prod["acks"]) == ("true", "all")
    cons = consumer_config(spec.kafka, "g")
    assert cons["auto.offset.reset"] == "earliest"
    assert cons["enable.auto.commit"] == "false"


def test_embedded_broker_spec_needs_bootstrap_for_clients() -> None:
    spec = parse_spec(HEAD, env={})
    with pytest.raises(ConfigError, match="bootstrap_servers"):
        client_config(spec.kafka)


def test_sasl_password_in_passthrough_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"kafka.librdkafka.sasl.password: put secrets"):
        parse_spec('kafka: {bootstrap_servers: "a:1", librdkafka: {sasl.password: x}}\n', env={})

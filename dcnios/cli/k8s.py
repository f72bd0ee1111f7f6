"""`dcnios k8s`: render Kubernetes manifests (kustomize-ready) from a spec."""

from __future__ import annotations

import argparse
import sys

from dcnios.cli._common import EXIT_OK, add_common
from dcnios.spec import load_spec

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from dcnios.deploy.k8s import RenderOptions

    defaults = RenderOptions()
    p = sub.add_parser(
        "k8s",
        help="render Kubernetes manifests: Deployments, Strimzi topics and users, KEDA, monitoring",
        description="Render a kustomize-ready directory from the spec: a producer Deployment per source, a "
        "consumer Deployment per consumer (with PDB and KEDA ScaledObject), Strimzi v1 KafkaTopics and "
        "least-privilege KafkaUsers, alert rules, a scrape config and a Grafana dashboard. Secrets are "
        "never written: secrets.txt lists the keys the existing Secret must hold. "
        "Apply with: kubectl apply -k DIR",
    )
    add_common(p)
    p.add_argument("--out", metavar="DIR", default="k8s", help="output directory (default: %(default)s)")
    p.add_argument("--namespace", metavar="NS", default=defaults.namespace, help="default: %(default)s")
    p.add_argument("--image", default=defaults.image, help="dcnios image (default: %(default)s)")
    p.add_argument(
        "--kafka-cluster", metavar="NAME", default=defaults.kafka_cluster, help="Strimzi Kafka cluster name"
    )
    p.add_argument(
        "--secret",
        metavar="NAME",
        default=defaults.secret_name,
        help="existing Secret holding the spec's secrets (default: %(default)s)",
    )
    p.add_argument(
        "--prometheus-url",
        metavar="URL",
        default=defaults.prometheus_url,
        help="Prometheus that KEDA asks for groups with a rate (default: %(default)s)",
    )
    p.add_argument(
        "--service-monitor",
        action="store_true",
        help="include the Prometheus Operator ServiceMonitor and PrometheusRule in the kustomization",
    )
    p.add_argument(
        "--lag-per-member", type=int, metavar="N", help="KEDA lagThreshold (default: 4 x concurrency)"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dcnios.deploy.k8s import RenderOptions, render, write

    spec = load_spec(args.config)
    options = RenderOptions(
        namespace=args.namespace,
        image=args.image,
        kafka_cluster=args.kafka_cluster,
        secret_name=args.secret,
        prometheus_url=args.prometheus_url,
        service_monitor=args.service_monitor,
        lag_per_member=args.lag_per_member,
    )
    bundle = render(spec, options)
    for path in write(bundle, args.out):
        sys.stdout.write(f"wrote {path}\n")
    sys.stdout.write(
        f"apply with: kubectl apply -k {args.out}  (after creating the Secret: see secrets.txt)\n"
    )
    return EXIT_OK

"""`dcnios schema`: the JSON Schema of the pipeline spec, for editors."""

from __future__ import annotations

import argparse
import json
import sys

from dcnios.cli._common import EXIT_OK, add_common
from dcnios.codec import load_schema
from dcnios.spec import spec_json_schema

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "schema",
        help="print the JSON Schema of the spec (or --avro: the StorageEvent Avro schema)",
        description="Print the JSON Schema of the pipeline spec, e.g. for yaml-language-server.",
    )
    p.add_argument("--avro", action="store_true", help="print schemas/storage_event.avsc instead")
    add_common(p, config=False)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    schema = load_schema() if args.avro else spec_json_schema()
    sys.stdout.write(json.dumps(schema, indent=2) + "\n")
    return EXIT_OK

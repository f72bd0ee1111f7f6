#!/bin/sh
# Workflow step "checksum": the supervisor staged the triggering file into $INPUT_FILE_PATH.
# A workflow step names each output ${JOB_UUID}_<name>: the orchestrator finds a job's outputs
# in the service's output directory by that prefix (see docs/architecture.md, Workflows).
set -eu
name=$(basename "$INPUT_FILE_PATH")
sha256sum "$INPUT_FILE_PATH" | cut -d' ' -f1 > "$TMP_OUTPUT_DIR/${JOB_UUID}_$name.sha256"
echo "checksummed $name"

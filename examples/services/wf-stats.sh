#!/bin/sh
# Workflow step "stats": rows and bytes of the triggering file (staged into $INPUT_FILE_PATH).
set -eu
name=$(basename "$INPUT_FILE_PATH")
{
    echo "rows:  $(($(wc -l < "$INPUT_FILE_PATH") - 1))"
    echo "bytes: $(wc -c < "$INPUT_FILE_PATH" | tr -d ' ')"
} > "$TMP_OUTPUT_DIR/${JOB_UUID}_$name.stats"
echo "counted $name"

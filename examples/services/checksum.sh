#!/bin/sh
# A sandbox OSCAR service: a checksum report for each input file.
# OSCAR's supervisor fetched the file named in the dCache event into $INPUT_FILE_PATH;
# whatever lands in $TMP_OUTPUT_DIR is collected as the job's output.
set -eu
name=$(basename "$INPUT_FILE_PATH")
{
    echo "file:   $name"
    echo "bytes:  $(wc -c < "$INPUT_FILE_PATH" | tr -d ' ')"
    echo "lines:  $(wc -l < "$INPUT_FILE_PATH" | tr -d ' ')"
    echo "sha256: $(sha256sum "$INPUT_FILE_PATH" | cut -d' ' -f1)"
    echo "job:    $JOB_UUID"
} > "$TMP_OUTPUT_DIR/$name.sha256.txt"
echo "checksummed $name"

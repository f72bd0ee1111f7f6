#!/bin/sh
# Workflow step "report", the join: $INPUT_FILE_PATH holds the run's document, with a storage
# reference ({step, storage_provider, path}) for every output of the steps it joins; a real
# service fetches them from dCache with its own credentials. The report lists what it joined.
set -eu
python3 - "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR" <<'PY'
import json, os, sys
doc = json.load(open(sys.argv[1]))["dcnios_workflow"]
name = os.path.basename(doc["trigger"])
with open(os.path.join(sys.argv[2], f"report-{name}.txt"), "w") as out:
    out.write(f"report for {doc['trigger']} (workflow {doc['workflow']}, run {doc['run']})\n")
    for ref in doc["inputs"]:
        out.write(f"  {ref['step']:<10} {ref['storage_provider']}:{ref['path']}\n")
print(f"joined {len(doc['inputs'])} inputs for {name}")
PY

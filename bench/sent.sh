# Sourced by the incremental benchmarks: the bytes each tool says it sent, read from its
# stdout saved in a file. wb_sent FILE: winbundle's JSON (a full bundle's stored bytes, an
# incremental one's new plus fetched stream bytes); wb_new FILE: an incremental bundle's new
# frames (the compressed size of the changed chunks); restic_sent FILE: `restic backup --json`'s
# data_added.
wb_sent() { python3 -c '
import json, sys
b = json.load(open(sys.argv[1]))["Bundle"]; p = b.get("Parent")
print(b["StoredBytes"] if not p else p["NewBytes"] + p["FetchedBytes"])' "$1"; }
wb_new() { python3 -c '
import json, sys
print(json.load(open(sys.argv[1]))["Bundle"]["Parent"]["NewBytes"])' "$1"; }
restic_sent() { python3 -c '
import json, sys
for line in open(sys.argv[1]):
    d = json.loads(line)
    if d.get("message_type") == "summary": print(d["data_added"])' "$1"; }

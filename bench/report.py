"""Turns bench/run.sh's measurements (results.jsonl) into bench/RESULTS.md.

Usage: report.py RESULTS.jsonl ALLOC.txt MACHINE ARGS
"""

import collections
import datetime
import json
import re
import subprocess
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
alloc = {}
for line in open(sys.argv[2]):
    size, n = line.split()
    alloc[int(size)] = int(n)
machine, args = sys.argv[3], sys.argv[4]
try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
except OSError:
    commit = "?"

out = []
w = out.append
w("# Benchmark results\n")
w(f"Made by `bench/run.sh {args}`".rstrip() + f" on {datetime.date.today()}, winbundle at commit `{commit}`.\n")
w(f"Machine: {machine}. Every pipeline ran once, one after the other in the same run, on the same")
w("disk image (in the page cache) and the same local servers, so the ratios compare like with like;")
w("the machine is shared and noisy, so read single numbers as ±10 %.\n")
w("Columns: **MB/s** is allocated volume data (what `winbundle inspect` calls allocated bytes) per")
w("wall-clock second; **CPU s** is user + system time of every process of the pipeline (not the")
w("server's); **RSS** is the peak resident size of the largest process of the pipeline; **server")
w("CPU s** is what the S3 server spent meanwhile; **requests** counts the S3 requests the server")
w("served (s3s-fs: its request log; Garage: its `api_s3_request_counter` metrics); **stored** is")
w("the bytes the pipeline left in the store.\n")

by_size = collections.defaultdict(list)
for r in rows:
    by_size[r["size"]].append(r)


def mbps(r):
    return alloc[r["size"]] / 1e6 / r["wall"]


def cpu_per_gb(r):
    return r["cpu"] / (alloc[r["size"]] / 1e9)


def restore_peers(rs, r):
    """The plain tools' rows a winbundle restore row is compared with: its group, and the
    group's variants (file: file-durable)."""
    g = r["group"]
    return [p for p in rs if p["kind"] == "restore-peer" and (p["group"] == g or p["group"].startswith(g + "-"))]


def peer_label(p):
    return "zstd + sync" if p["group"] == "file-durable" else "the peer"


targets = []
for size in sorted(by_size):
    rs = by_size[size]
    a = alloc[size]
    w(f"## C: of {size} GiB, {a / 1e9:.2f} GB allocated\n")
    limit = next((r for r in rs if r["kind"] == "limit"), None)
    w("| pipeline | wall s | MB/s | CPU s | CPU s/GB | peak RSS MiB | server CPU s | requests | stored GB (sent) | ratio |")
    w("|---|---|---|---|---|---|---|---|---|---|")
    for r in rs:
        ratio = ""
        if r["kind"] in ("local", "limit") and limit:
            ratio = f"{limit['wall'] / r['wall']:.2f}× the CPU limit"
        elif r["kind"] in ("s3", "peer"):
            peers = [p for p in rs if p["kind"] == "peer" and p["server"] == r["server"]]
            if peers:
                best = min(peers, key=lambda p: p["wall"])
                ratio = f"{best['wall'] / r['wall']:.2f}× the best peer"
        elif r["kind"] == "restore":
            ratio = ", ".join(f"{p['wall'] / r['wall']:.2f}× {peer_label(p)}" for p in restore_peers(rs, r))
        elif r["kind"] in ("inc-parent", "inc-runs"):
            full = next((p for p in rs if p["kind"] == "inc-full" and p["server"] == r["server"]), None)
            restic = next((p for p in rs if p["kind"] == "inc-restic" and p["server"] == r["server"]), None)
            parts = []
            if full:
                parts.append(f"{r['wall'] / full['wall']:.2f} of the full run's time")
            if restic:
                parts.append(f"{restic['wall'] / r['wall']:.2f}× restic")
            ratio = ", ".join(parts)
        server = "" if r["server"] == "-" else f"{r['server_cpu']:.1f}"
        reqs = "" if r["server"] == "-" else str(r["requests"])
        stored = f"{r['stored'] / 1e9:.2f}" if r["stored"] else ""
        if r["sent"] is not None:
            stored = f"{stored} (sent {r['sent'] / 1e9:.3f})".strip()
        name = r["name"].replace("|", "\\|")
        w(
            f"| {name} | {r['wall']:.2f} | {mbps(r):.0f} | {r['cpu']:.1f} | {cpu_per_gb(r):.2f} | "
            f"{r['rss_kib'] / 1024:.0f} | {server} | {reqs} | {stored} | {ratio} |"
        )
    w("")
    # Targets, for this size.
    for server in sorted({r["server"] for r in rs if r["kind"] == "s3"}):
        mine = [r for r in rs if r["kind"] == "s3" and r["server"] == server and "policy" not in r["name"]]
        peers = [r for r in rs if r["kind"] == "peer" and r["server"] == server]
        if mine and peers:
            best = min(peers, key=lambda p: p["wall"])
            m = mine[0]
            targets.append((f"{size} GiB: bundle to {server}, throughput vs the best peer", best["wall"] / m["wall"], 1.5, "≥"))
            targets.append(
                (f"{size} GiB: client CPU per GB, winbundle → {server} / best peer", cpu_per_gb(m) / cpu_per_gb(best), 0.5, "≤")
            )
    for rest in (r for r in rs if r["kind"] == "restore"):
        for p in restore_peers(rs, rest):
            if p["group"] == "file-durable":
                continue  # shown in the table; the target is plain zstd -d --sparse
            targets.append((f"{size} GiB: restore ({rest['group']}) vs `{p['name']}`", p["wall"] / rest["wall"], 1.5, "≥"))
    for server in sorted({r["server"] for r in rs if r["kind"] == "inc-parent"}):
        inc = {r["kind"]: r for r in rs if r["kind"].startswith("inc-") and r["server"] == server}
        if "inc-full" not in inc:
            continue
        f = inc["inc-full"]
        for kind, how in (("inc-parent", "--parent"), ("inc-runs", "--parent --layout runs")):
            if kind not in inc:
                continue
            i = inc[kind]
            targets.append((f"{size} GiB, {server}: incremental ({how}) wall time / a full run's", i["wall"] / f["wall"], 0.25, "≤"))
            if i["new"]:
                targets.append(
                    (f"{size} GiB, {server}: incremental ({how}) bytes sent / compressed size of the changed chunks", i["sent"] / i["new"], 2.0, "≤")
                )
            if "inc-restic" in inc:
                targets.append(
                    (f"{size} GiB, {server}: restic's second snapshot wall time / incremental ({how})'s", inc["inc-restic"]["wall"] / i["wall"], 1.0, "≥")
                )
    local = next((r for r in rs if r["name"] == "winbundle → local store"), None)
    if local and limit:
        targets.append((f"{size} GiB: local store vs the CPU limit", limit["wall"] / local["wall"], 0.9, "≥"))
    t1 = next((r for r in rs if r["name"].endswith("--threads 1")), None)
    t2 = next((r for r in rs if r["name"].endswith("--threads 2")), None)
    if t1 and t2:
        targets.append((f"{size} GiB: --threads 1 time / --threads 2 time", t1["wall"] / t2["wall"], 1.8, "≥"))

defaults = [r for r in rows if r["name"].startswith("winbundle") and "--threads" not in r["name"]]
if defaults:
    peak = max(r["rss_kib"] for r in defaults) / 1024
    targets.append(("peak RSS of winbundle at default settings, MiB (all sizes)", peak, 256, "≤"))
    sizes = sorted(by_size)
    if len(sizes) >= 2:
        # The same pipeline at the smallest and the largest volume.
        small = {r["name"]: r["rss_kib"] for r in defaults if r["size"] == sizes[0]}
        large = {r["name"]: r["rss_kib"] for r in defaults if r["size"] == sizes[-1]}
        growth = [(large[n] / small[n], n) for n in small if n in large and small[n]]
        if growth:
            g, n = max(growth)
            targets.append(
                (f"peak RSS growth from {sizes[0]} to {sizes[-1]} GiB, largest of any winbundle pipeline ({n})", g, 1.1, "≤")
            )

w("## Targets\n")
w("| target | measured | goal | met |")
w("|---|---|---|---|")
for name, value, goal, op in targets:
    ok = value >= goal if op == "≥" else value <= goal
    w(f"| {name} | {value:.2f} | {op} {goal} | {'yes' if ok else '**no**'} |")
w("")
w("Why a target is missed, and what limits each pipeline: bench/README.md.\n")
w("## Exact commands\n")
w("Paths shortened: `$IMG` is the disk image, `$VOL` its C: partition as a file, `$WB` the release")
w("binary, `$WORK` bench/work; credentials and endpoints come from the servers bench/run.sh started")
w("(secrets elided).\n")
w("```sh")
seen = set()
for r in rows:
    if r["name"] in seen:
        continue
    seen.add(r["name"])
    cmd = r["command"]
    for key in ("AWS_SECRET_ACCESS_KEY=", "RCLONE_CONFIG_B_SECRET_ACCESS_KEY=", "--upload-policy-signature ", "--upload-policy "):
        while key in cmd:
            i = cmd.index(key) + len(key)
            j = cmd.find(" ", i)
            j = len(cmd) if j < 0 else j
            if cmd[i:j] == "…":
                break
            cmd = cmd[:i] + "…" + cmd[j:]
    cmd = re.sub(r"'[^']*/disk\d+-c\.img'", "$VOL", cmd)
    cmd = re.sub(r"'[^']*/disk\d+\.img'", "$IMG", cmd)
    cmd = re.sub(r"'[^']*/target/release/winbundle'", "$WB", cmd)
    cmd = re.sub(r"'[^']*/bench/work/", "'$WORK/", cmd)
    w(f"# {r['name']}")
    w(cmd)
w("```")
print("\n".join(out))

"""Turns the `system metric median min-max` lines of bench/compare.sh into
bench/results/compare.json and compare.md: each figure with its ratio to cachefs
(the embedded default), the load average, and the issue's targets checked."""
import json, sys, datetime

path, runs, scale, load, out = sys.argv[1:6]
rows = {}
for line in open(path):
    s, m, med, rng = line.split()
    rows.setdefault(s, {})[m] = {"median": float(med), "range": rng}
metrics = [("cold_seq", "cold seq read", "MB/s"), ("loader_cold", "loader epoch, cold", "files/s"), ("find_cold", "find+stat cold", "files/s"),
           ("warm_seq", "warm seq read", "MB/s"), ("warm_reread", "warm re-read (page cache)", "MB/s"),
           ("fio_rand", "fio 4x128KiB random", "MB/s"), ("find_warm", "find+stat warm", "files/s"),
           ("small_random", "loader epoch, warm", "files/s"), ("rss_mib", "mount RSS during 1 GiB read", "MiB")]
systems = list(rows)
def get(s, m):
    return rows.get(s, {}).get(m, {}).get("median")
def ratio(a, b):
    return None if a is None or b in (None, 0) else round(a / b, 2)
def best(*values):
    known = [v for v in values if v is not None]
    return max(known) if known else None
targets = [
    ("warm seq >= 0.8 x the tier read directly", ratio(get("cachefs", "warm_seq"), get("tier", "warm_seq")), 0.8),
    ("warm loader epoch >= 0.8 x the same loader on the tier", ratio(get("cachefs", "small_random"), get("tier", "small_random")), 0.8),
    ("cold seq >= 1.5 x s3fs", ratio(get("cachefs", "cold_seq"), get("s3fs", "cold_seq")), 1.5),
    ("cold loader epoch >= 1.5 x best of s3fs, rclone", ratio(get("cachefs", "loader_cold"), best(get("s3fs", "loader_cold"), get("rclone", "loader_cold"))), 1.5),
    ("warm seq, short-circuit >= 1.0 x s3fs", ratio(get("cachefs_sc", "warm_seq"), get("s3fs", "warm_seq")), 1.0),
    ("warm seq, short-circuit >= 0.8 x bindfs", ratio(get("cachefs_sc", "warm_seq"), get("bindfs", "warm_seq")), 0.8),
    ("warm loader epoch >= 1.5 x s3fs", ratio(get("cachefs", "small_random"), get("s3fs", "small_random")), 1.5),
    ("warm loader epoch >= 1.5 x rclone", ratio(get("cachefs", "small_random"), get("rclone", "small_random")), 1.5),
    ("find+stat warm >= 2 x s3fs", ratio(get("cachefs", "find_warm"), get("s3fs", "find_warm")), 2.0),
    ("mount RSS during 1 GiB read <= 200 MiB", get("cachefs", "rss_mib"), None),
]
doc = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "runs": int(runs), "scale": scale, "load_average": load,
       "results": rows,
       "targets": [{"target": t, "value": v, "holds": (v is not None and (v >= lim if lim is not None else v <= 200))} for t, v, lim in targets if v is not None]}
json.dump(doc, open(out + ".json", "w"), indent=1)
md = [f"# cachefs compared ({doc['date']}, {runs} runs, {scale})", "", f"Load average (1, 5, 15 min): {load}.", "",
      "Median (min-max); in brackets the ratio to `cachefs` (embedded cache). The server waits TTFB_MS before every request "
      "and paces each connection to CONN_MBPS; `tier` is the embedded cache's own files read directly.", ""]
md.append("| | " + " | ".join(systems) + " |")
md.append("|---" * (len(systems) + 1) + "|")
for m, label, unit in metrics:
    cells = []
    for s in systems:
        r = rows.get(s, {}).get(m)
        if not r:
            cells.append("–"); continue
        rat = ratio(r["median"], get("cachefs", m))
        cells.append(f"{r['median']:.0f} ({r['range']}) [{rat}]" if r["range"] != "-" else f"{r['median']:.0f} [{rat}]")
    if any(c != "–" for c in cells):
        md.append(f"| {label} ({unit}) | " + " | ".join(cells) + " |")
md += ["", "| target | value | holds |", "|---|---|---|"]
for t in doc["targets"]:
    md.append(f"| {t['target']} | {t['value']} | {'yes' if t['holds'] else 'NO'} |")
open(out + ".md", "w").write("\n".join(md) + "\n")

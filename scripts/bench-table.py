#!/usr/bin/env python3
"""Prints the table of a scripts/bench or scripts/bench-peers run from its JSON lines.

Fan-out rows: deliveries, loss, the servers' CPU per delivery (the headline:
one load core cannot receive much more than ~1.2 M messages/s, so throughput
alone would measure the load generator), latency, and the run as a fraction of
the ceiling with the same shape (burst or steady): ceiling CPU per delivery /
this run's, i.e. how much of the machine's best deliveries per CPU-second it
reaches. With --against LABEL-PREFIX, also the ratio to that peer's row.
"""
import json
import sys


def main(path, against=None):
    rows = [json.loads(line) for line in open(path) if line.strip().startswith("{")]
    fan = [r for r in rows if "cpu_us_per_delivery" in r]

    def shape(label):
        for s in ("burst", "steady", "wide"):
            if s in label:
                return s
        return ""

    ceiling = {}
    for r in fan:
        if r["scenario"].startswith("ceiling") and r.get("cpu_us_per_delivery"):
            s = shape(r["scenario"])
            best = ceiling.get(s)
            if best is None or r["cpu_us_per_delivery"] < best["cpu_us_per_delivery"]:
                ceiling[s] = r
    head = f"{'run':32} {'conns':>6} {'ev/ws':>6} {'rate':>5} {'delivered':>10} {'lost':>6} {'ooo':>4} {'CPU-s':>7} {'CPU-us/dlv':>10} {'p50 ms':>8} {'p99 ms':>8} {'of ceiling':>10}"
    print(head)
    print("-" * len(head))
    for r in fan:
        c = ceiling.get(shape(r["scenario"]))
        frac = ""
        if c and r.get("cpu_us_per_delivery"):
            frac = f"{c['cpu_us_per_delivery'] / r['cpu_us_per_delivery']:.0%}"
        lat = r.get("latency_ms") or {}
        print(
            f"{r['scenario']:32} {r['conns']:>6} {r['events']:>6} {r['rate']:>5} {r['delivered']:>10} {r['lost']:>6} {r['out_of_order']:>4} "
            f"{r['server_cpu_s']:>7.2f} {r['cpu_us_per_delivery'] or 0:>10.3f} {lat.get('p50', 0):>8.1f} {lat.get('p99', 0):>8.1f} {frac:>10}"
        )
    if against:
        by = {r["scenario"]: r for r in fan}
        peers = sorted({r["scenario"].rsplit("-", 1)[0] for r in fan} - {against, "ceiling", "ceiling-coalesce"})
        print(f"\n{against} / peer (lower is better for {against}; 0.5 = half the peer's cost):")
        for peer in peers:
            cells = []
            for s in ("burst", "steady"):
                a, b = by.get(f"{against}-{s}"), by.get(f"{peer}-{s}")
                if not (a and b and a.get("cpu_us_per_delivery") and b.get("cpu_us_per_delivery")):
                    continue
                cells.append(f"{s}: CPU/delivery {a['cpu_us_per_delivery'] / b['cpu_us_per_delivery']:.2f}")
                la, lb = (a.get("latency_ms") or {}).get("p99"), (b.get("latency_ms") or {}).get("p99")
                if la and lb:
                    cells.append(f"{s} p99 {la / lb:.2f}")
                if b["lost"]:
                    cells.append(f"{peer} lost {b['lost']} in {s}")
            idle = {r.get("server"): r for r in rows if r["scenario"] == "idle"}
            if against in idle and peer in idle and idle[peer]["kib_per_conn"] > 0:
                cells.append(f"idle KiB/conn {idle[against]['kib_per_conn'] / idle[peer]['kib_per_conn']:.2f}")
            print(f"  vs {peer:20} " + ", ".join(cells))
    print()
    for r in rows:
        if r["scenario"] == "idle":
            who = f"{r['server']}: " if r.get("server") else ""
            print(f"idle: {who}{r['kib_per_conn']} KiB RSS per idle connection ({r['from']} -> {r['to']} connections, {r['rss_from_mib']} -> {r['rss_to_mib']} MiB)")
        if r["scenario"] == "reconnect":
            rec = r.get("recovery_ms") or {}
            print(f"reconnect: {r['cut_off']} of {r['conns']} connections cut off by a SIGKILL, {r['recovered']} back; recovery p50 {rec.get('p50')} ms, p99 {rec.get('p99')} ms, max {rec.get('max')} ms; {r['lost']} of {r['expected']} deliveries lost, {r['duplicates_dropped']} duplicates dropped by the client")
        if r["scenario"] == "connect":
            print(f"connect: {r['connects_per_s']:.0f} authenticated connections/s ({r['conns']} in {r['seconds']} s, {r['server_cpu_us_per_connect']} server CPU-us each)")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)

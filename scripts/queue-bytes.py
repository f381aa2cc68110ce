#!/usr/bin/env python3
# Sizes TIDINGS_CLIENT_QUEUE_BYTES: for each queue bound, starts `tidings dev`,
# connects C reading clients, publishes a burst of N events of ~B bytes as fast
# as the HTTP publish API takes them, and counts what the clients lost (lagged,
# 4009) and the gateway's resident memory at the end.
# Usage: scripts/queue-bytes.py target/release/tidings [C N B]   (needs `pip install websockets`)
# A stop-gap until tidings-bench exists; clients are Python, i.e. slow readers,
# which is what a browser tab under load is too.
import asyncio, json, re, socket, subprocess, sys, time, urllib.request
import websockets

BIN = sys.argv[1]
C, N, B = (int(a) for a in (sys.argv[2:5] if len(sys.argv) >= 5 else ("20", "20000", "500")))
BOUNDS = [256 << 10, 1 << 20, 4 << 20, 16 << 20]

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def rss(base):
    text = urllib.request.urlopen(base + "/metrics").read().decode()
    return float(re.search(r"^tidings_process_resident_memory_bytes (\S+)", text, re.M).group(1))

async def run(bound):
    port = free_port(); base = f"http://127.0.0.1:{port}"
    dev = subprocess.Popen([BIN, "dev", "--listen", f"127.0.0.1:{port}", "--client-queue-bytes", str(bound),
                            "--jwt-secret", "qb", "--publish-token", "qb", "--max-connections-per-user", "100000",
                            "--metrics-interval-ms", "600000"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    token = None
    for line in dev.stdout:
        m = re.search(r"token=([A-Za-z0-9_\-\.]+)", line)
        if m: token = m.group(1); break
    stats = {"events": 0, "lagged": 0, "closed_4009": 0}
    done = asyncio.Event()
    async def client():
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws?token={token}&workspace_id=dev&event_types=burst", max_size=None) as ws:
            await ws.recv()
            try:
                async for msg in ws:
                    m = json.loads(msg)
                    if m["type"] == "burst":
                        stats["events"] += 1
                        if m["data"]["last"]: return
                    elif m["type"] == "lagged": stats["lagged"] += m["dropped"]
            except websockets.ConnectionClosed as e:
                if e.rcvd and e.rcvd.code == 4009: stats["closed_4009"] += 1
    tasks = [asyncio.create_task(client()) for _ in range(C)]
    await asyncio.sleep(1)
    pad = "x" * max(0, B - 120)
    t0 = time.time()
    for start in range(0, N, 1000):
        body = json.dumps([{"type": "burst", "data": {"n": n, "last": n == N - 1, "pad": pad}} for n in range(start, min(start + 1000, N))]).encode()
        req = urllib.request.Request(base + "/v1/workspaces/dev/events", body, {"Authorization": "Bearer qb", "Content-Type": "application/json"})
        await asyncio.get_running_loop().run_in_executor(None, urllib.request.urlopen, req)
    published = time.time() - t0
    await asyncio.wait(tasks, timeout=120)
    mem = rss(base)
    dev.terminate(); dev.wait()
    lost = C * N - stats["events"]
    print(f"| {bound >> 10} KiB | {published:.1f} s | {stats['events']}/{C * N} | {lost} | {stats['closed_4009']} | {mem / 1e6:.0f} MB |", flush=True)

print(f"{C} reading clients, a burst of {N} events of ~{B} B")
print("| TIDINGS_CLIENT_QUEUE_BYTES | burst published in | events received | lost | closed 4009 | gateway RSS after |")
print("| --- | --- | --- | --- | --- | --- |")
for bound in BOUNDS:
    asyncio.run(run(bound))

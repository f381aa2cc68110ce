#!/usr/bin/env python3
# Opens N idle WebSocket connections to a running `tidings dev` and reports the
# gateway's resident memory per connection (from /metrics) and the connect rate.
# Usage: scripts/idle-connections.py http://127.0.0.1:8080 <token> 5000   (needs `pip install websockets`)
# A stop-gap until tidings-bench exists; it has no comparison system yet.
import asyncio, re, sys, time, urllib.request
import websockets

BASE, TOKEN, N = sys.argv[1], sys.argv[2], int(sys.argv[3])

def rss():
    text = urllib.request.urlopen(BASE + "/metrics").read().decode()
    return float(re.search(r"^tidings_process_resident_memory_bytes (\S+)", text, re.M).group(1))

async def main():
    before = rss()
    conns = []
    t0 = time.time()
    for i in range(N):
        ws = await websockets.connect(BASE.replace("http", "ws") + "/ws?token=" + TOKEN + "&workspace_id=dev", max_size=None, ping_interval=None)
        await ws.recv()  # connected
        conns.append(ws)
    t1 = time.time()
    await asyncio.sleep(1)
    after = rss()
    print(f"{N} connections in {t1-t0:.1f}s ({N/(t1-t0):.0f}/s); RSS {before/1e6:.1f} MB -> {after/1e6:.1f} MB; {(after-before)/N/1024:.1f} KiB per idle connection")
    for ws in conns:
        await ws.close()

asyncio.run(main())

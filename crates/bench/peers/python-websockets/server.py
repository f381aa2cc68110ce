"""Peer for scripts/bench-peers: a Python server as dashboards write it —
`websockets` (the library under FastAPI/uvicorn's WebSocket support) with
`redis.asyncio`. Same job as a gateway: authenticated connect to a workspace
(HS256 JWT in ?token=), one Redis channel per workspace subscribed while it has
readers, every message forwarded to the local sockets of that workspace."""
import asyncio
import base64
import hashlib
import hmac
import json
import os
import time
from urllib.parse import parse_qs, urlparse

import redis.asyncio as aioredis
import websockets
from websockets.asyncio.server import broadcast, serve

SECRET = os.environ.get("TIDINGS_JWT_SECRET", "bench-secret").encode()
rooms: dict[str, set] = {}


def b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def verify(token: str):
    try:
        h, p, s = token.split(".")
    except ValueError:
        return None
    expected = hmac.new(SECRET, f"{h}.{p}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, b64(s)):
        return None
    claims = json.loads(b64(p))
    return claims if claims.get("exp", 0) > time.time() else None


async def main():
    client = aioredis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"))
    pubsub = client.pubsub()

    async def handler(ws):
        query = parse_qs(urlparse(ws.request.path).query)
        claims = verify(query.get("token", [""])[0])
        workspace = query.get("workspace_id", [None])[0] or (claims or {}).get("workspace_id")
        if not claims or claims.get("workspace_id") != workspace:
            await ws.close(1008, "unauthorized")
            return
        room = rooms.get(workspace)
        if room is None:
            room = rooms[workspace] = set()
            await pubsub.subscribe(f"workspace:{workspace}")
        room.add(ws)
        await ws.send(json.dumps({"type": "connected", "workspace_id": workspace}))
        try:
            await ws.wait_closed()
        finally:
            room.discard(ws)
            if not room:
                rooms.pop(workspace, None)
                await pubsub.unsubscribe(f"workspace:{workspace}")

    async def forward():
        while True:
            if not pubsub.subscribed:
                await asyncio.sleep(0.01)
                continue
            message = await pubsub.get_message(timeout=1.0)
            if message and message["type"] == "message":
                workspace = message["channel"].decode()[len("workspace:"):]
                broadcast(rooms.get(workspace, ()), message["data"].decode())

    port = int(os.environ.get("PORT", "8202"))
    async with serve(handler, "127.0.0.1", port, ping_interval=25, max_queue=None):
        print(f"python-websockets peer on {port}", flush=True)
        await forward()


asyncio.run(main())

// Peer for scripts/bench-peers: the stack of the dashboards Tidings replaces —
// Node's `ws` with `ioredis`. Same job as a gateway: authenticated connect to a
// workspace (HS256 JWT in ?token=, checked with node:crypto), one Redis
// channel per workspace subscribed while it has readers, every message
// forwarded to the local sockets of that workspace.
import { createServer } from "node:http";
import { verify as verifyToken } from "./hs256.mjs";
import Redis from "ioredis";
import { WebSocketServer } from "ws";

const port = Number(process.env.PORT ?? 8201);
const secret = process.env.TIDINGS_JWT_SECRET ?? "bench-secret";


const rooms = new Map(); // workspace -> Set<WebSocket>
const subscriber = new Redis(process.env.REDIS_URL ?? "redis://127.0.0.1:6379");
subscriber.on("messageBuffer", (channel, message) => {
  const sockets = rooms.get(channel.toString().slice("workspace:".length));
  if (!sockets) return;
  const text = message.toString();
  for (const ws of sockets) ws.send(text);
});

const server = createServer((_, res) => res.writeHead(404).end());
const wss = new WebSocketServer({ noServer: true });
server.on("upgrade", (req, socket, head) => {
  const url = new URL(req.url, "http://x");
  const claims = verifyToken(url.searchParams.get("token"), secret);
  const workspace = url.searchParams.get("workspace_id") ?? claims?.workspace_id;
  if (!claims || claims.workspace_id !== workspace) {
    socket.end("HTTP/1.1 401 Unauthorized\r\n\r\n");
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    let room = rooms.get(workspace);
    const join = () => ws.send(JSON.stringify({ type: "connected", workspace_id: workspace }));
    if (!room) {
      room = new Set();
      rooms.set(workspace, room);
      subscriber.subscribe(`workspace:${workspace}`).then(join);
    } else join();
    room.add(ws);
    ws.on("close", () => {
      room.delete(ws);
      if (room.size === 0) {
        rooms.delete(workspace);
        subscriber.unsubscribe(`workspace:${workspace}`);
      }
    });
  });
});
server.listen(port, "127.0.0.1", () => console.error(`node-ws peer on ${port}`));

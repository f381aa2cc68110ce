// Peer for scripts/bench-peers: Socket.IO 4 with the Redis adapter, as a
// Socket.IO deployment runs. Same job as a gateway: authenticated connect to a
// workspace (HS256 JWT in the handshake query, checked with node:crypto), one
// Redis channel per workspace subscribed while it has readers, each message
// emitted to the local sockets of that workspace's room (`io.local`: the
// channel already reached every server, so the adapter must not re-broadcast).
// WebSocket transport only; Engine.IO pings every 10 min so a run never pays them.
import { createServer } from "node:http";
import { verify as verifyToken } from "./hs256.mjs";
import { createAdapter } from "@socket.io/redis-adapter";
import Redis from "ioredis";
import { Server } from "socket.io";

const url = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
const secret = process.env.TIDINGS_JWT_SECRET ?? "bench-secret";
const port = Number(process.env.PORT ?? 8203);


const pub = new Redis(url);
const sub = pub.duplicate();
const channels = new Redis(url);
const httpServer = createServer();
const io = new Server(httpServer, { transports: ["websocket"], serveClient: false, pingInterval: 600000, pingTimeout: 600000, perMessageDeflate: false });
io.adapter(createAdapter(pub, sub));

io.use((socket, next) => {
  const { token, workspace_id: workspace } = socket.handshake.query;
  const claims = verifyToken(token, secret);
  if (!claims || claims.workspace_id !== workspace) return next(new Error("unauthorized"));
  socket.data.workspace = workspace;
  next();
});

const readers = new Map(); // workspace -> local sockets
io.on("connection", async (socket) => {
  const workspace = socket.data.workspace;
  socket.join(workspace);
  const n = (readers.get(workspace) ?? 0) + 1;
  readers.set(workspace, n);
  if (n === 1) await channels.subscribe(`workspace:${workspace}`);
  socket.emit("connected", { type: "connected", workspace_id: workspace });
  socket.on("disconnect", () => {
    const left = (readers.get(workspace) ?? 1) - 1;
    if (left === 0) {
      readers.delete(workspace);
      channels.unsubscribe(`workspace:${workspace}`);
    } else readers.set(workspace, left);
  });
});

channels.on("messageBuffer", (channel, message) => {
  const workspace = channel.toString().slice("workspace:".length);
  io.local.to(workspace).emit("event", JSON.parse(message.toString()));
});

httpServer.listen(port, "127.0.0.1", () => console.error(`socket.io peer on ${port}`));

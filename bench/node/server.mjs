// The Node side of the chat benchmark: a Socket.IO 4.8 server speaking the subset of our chat
// protocol the load uses (auth {name}, room:join, message -> message to the room, sender included,
// with a server id and time, acknowledged when asked), as the original Node app did. WORKERS > 1
// runs Node's cluster module (round-robin accept in the primary) with the Redis adapter, as the
// original ran under PM2.
//
// usage: node server.mjs PORT [WORKERS] [REDIS_URL]
import cluster from "node:cluster";
import { createServer } from "node:http";
import { Server } from "socket.io";

const [port, workersArg = "1", redisUrl] = process.argv.slice(2);
const workers = Number(workersArg);

if (workers > 1 && cluster.isPrimary) {
  for (let i = 0; i < workers; i++) cluster.fork();
  cluster.on("exit", () => process.exit(1));
} else {
  const http = createServer((req, res) => {
    if (req.url === "/health") {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ status: "ok", pid: process.pid }));
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  // Websocket only, as the load rounds connect; SIO_TRANSPORTS=polling,websocket for the polling
  // memory figure.
  const transports = (process.env.SIO_TRANSPORTS ?? "websocket").split(",");
  const io = new Server(http, { transports });
  if (workers > 1) {
    const { createAdapter } = await import("@socket.io/redis-adapter");
    const { createClient } = await import("redis");
    const pub = createClient({ url: redisUrl });
    const sub = pub.duplicate();
    await Promise.all([pub.connect(), sub.connect()]);
    io.adapter(createAdapter(pub, sub));
  }
  let seq = 0;
  io.on("connection", (socket) => {
    const name = String(socket.handshake.auth?.name ?? "guest").slice(0, 32);
    const guest = { id: `g_${socket.id}`, name };
    socket.on("room:join", (data, ack) => {
      socket.join(String(data?.room));
      if (typeof ack === "function") ack({ ok: true, room: data?.room });
    });
    socket.on("message", (data, ack) => {
      const id = `${process.pid}-${++seq}`;
      const time = Date.now();
      io.to(String(data?.room)).emit("message", { id, room: data?.room, from: guest, text: String(data?.text), time });
      if (typeof ack === "function") ack({ ok: true, id, time });
    });
  });
  http.listen(Number(port), "127.0.0.1");
}

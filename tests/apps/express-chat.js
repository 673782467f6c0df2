// A plain Express + Socket.IO chat server, written the way PM2 users write theirs: it knows nothing
// of chatctl. It listens on process.env.PORT, shares rooms through Redis when REDIS_URL is set, and
// serves /health. The Node tests run it unmodified under chatctl, in cluster and fork mode.
const http = require("http");
const express = require("express");
const { Server } = require("socket.io");

const app = express();
const server = http.createServer(app);
const io = new Server(server);

app.get("/health", (req, res) => res.json({ status: "ok", pid: process.pid }));
app.get("/api/hello", (req, res) => res.json({ hello: "world", pid: process.pid }));

io.on("connection", (socket) => {
  socket.on("join", (room, ack) => {
    socket.join(room);
    if (ack) ack({ ok: true, pid: process.pid });
  });
  socket.on("message", ({ room, text }, ack) => {
    io.to(room).emit("message", { text, pid: process.pid });
    if (ack) ack({ ok: true });
  });
});

async function main() {
  if (process.env.REDIS_URL) {
    const { createAdapter } = require("@socket.io/redis-adapter");
    const { createClient } = require("redis");
    const pub = createClient({ url: process.env.REDIS_URL });
    const sub = pub.duplicate();
    await Promise.all([pub.connect(), sub.connect()]);
    io.adapter(createAdapter(pub, sub));
  }
  const port = process.env.PORT || 3000;
  server.listen(port, () => console.log(`listening on ${port}`));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});

// Guests chatting through `chatctl update` (the daemon re-executing itself), with the real
// socket.io-client v4: GUESTS guests on both transports join a room and keep sending messages
// before, during and after the update. None may be disconnected, and every message must reach
// every guest exactly once, in order.
// Prints one JSON line; exits 1 with a reason on any failure.
//
// usage: node update-chat.mjs URL CHATCTL_BINARY NEW_BINARY
//        (CHATCTL_HOME names the deployment)
import { io } from "socket.io-client";
import { deadline, fail, until as waitUntil } from "./common.mjs";
import { execFile } from "node:child_process";
import { promisify } from "node:util";

const until = (what, check, ms = 20_000) => waitUntil(what, check, ms);

const [url, chatctl, binary] = process.argv.slice(2);
const room = "lobby";
deadline(50);

function guest(name, transport) {
  const socket = io(url, { transports: [transport], reconnection: false });
  const g = { name, socket, connects: 0, disconnects: 0, received: [] };
  socket.on("connect", () => g.connects++);
  socket.on("disconnect", (reason) => {
    g.disconnects++;
    g.reason = reason;
  });
  socket.on("message", (m) => g.received.push(m.text));
  return g;
}

const guests = ["ann", "bob", "cid", "dee"].map((name, i) => guest(name, i % 2 ? "polling" : "websocket"));
await until("all connected", () => guests.every((g) => g.connects === 1));
for (const g of guests) {
  const join = await g.socket.timeout(5000).emitWithAck("guest:join", { name: g.name });
  if (!join.ok) fail(`guest:join: ${join.error}`);
  const r = await g.socket.timeout(5000).emitWithAck("room:join", { room });
  if (!r.ok) fail(`room:join: ${r.error}`);
}

// Every guest sends one message every 150 ms (within the per-socket and per-address rate limits)
// until told to stop.
const sent = [];
let sending = true;
const senders = guests.map(async (g) => {
  for (let n = 0; sending; n++) {
    const text = `${g.name} ${n}`;
    const ack = await g.socket.timeout(5000).emitWithAck("message", { room, text }).catch((e) => fail(`${g.name}: ${e}`));
    if (!ack.ok) fail(`${g.name}: message refused: ${ack.error}`);
    sent.push(text);
    await new Promise((r) => setTimeout(r, 150));
  }
});

await new Promise((r) => setTimeout(r, 500));
const before = sent.length;
const update = await promisify(execFile)(chatctl, ["update", "--binary", binary], { env: process.env }).catch((e) =>
  fail(`update: ${e.stdout} ${e.stderr}`),
);
const during = sent.length;
await new Promise((r) => setTimeout(r, 500));
sending = false;
await Promise.all(senders);

await until("every message reached everyone", () => guests.every((g) => g.received.length === sent.length));
for (const g of guests) {
  if (g.disconnects > 0) fail(`${g.name} was disconnected: ${g.reason}`);
  const unique = new Set(g.received);
  if (unique.size !== sent.length) fail(`${g.name} got ${g.received.length} messages, ${unique.size} distinct, of ${sent.length}`);
  // Each sender's messages arrive in the order it sent them.
  for (const other of guests) {
    const theirs = g.received.filter((t) => t.startsWith(`${other.name} `)).map((t) => Number(t.split(" ")[1]));
    if (theirs.some((n, i) => n !== i)) fail(`${g.name} got ${other.name}'s messages out of order`);
  }
}

console.log(
  JSON.stringify({ ok: true, sent: sent.length, before, during, update: update.stdout.trim(), disconnects: 0 }),
);
for (const g of guests) g.socket.disconnect();
process.exit(0);

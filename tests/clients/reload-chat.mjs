// Guests chatting through a rolling reload, with the real socket.io-client v4: two guests join a
// room, `chatctl reload` replaces the worker, both reconnect by themselves, keep their guest ids, are
// back in the room without joining again, and messages sent afterwards reach both.
// Prints one JSON line; exits 1 with a reason on any failure.
//
// With TRANSPORT `polling` the guests long-poll (no websocket), so with several INSTANCES every
// request of theirs is routed to the instance that has their session, before, during and after.
//
// usage: node reload-chat.mjs URL CHATCTL_BINARY [websocket|polling] [INSTANCES]
//        (CHATCTL_HOME and the cwd name the deployment)
import { io } from "socket.io-client";
import { deadline, fail, until as waitUntil } from "./common.mjs";
import { execFile } from "node:child_process";
import { promisify } from "node:util";

const until = (what, check, ms = 20_000) => waitUntil(what, check, ms);

const [url, chatctl, transport = "websocket", instances = "1"] = process.argv.slice(2);
const room = "lobby";
deadline(50);

function guest(name) {
  // The session token the server pushes is kept in `auth`: socket.io-client sends it again on
  // every reconnection, which is all a client needs to do.
  const socket = io(url, { transports: [transport], reconnectionDelay: 200, reconnectionDelayMax: 500, auth: {} });
  const g = { name, socket, connects: 0, sessions: [], members: [], received: [] };
  socket.on("connect", () => g.connects++);
  socket.on("session", (s) => {
    socket.auth = { token: s.token };
    g.sessions.push(s.guest);
  });
  socket.on("session:error", (e) => fail(`${name}: session refused: ${e.error}`));
  socket.on("room:members", (m) => m.room === room && (g.members = m.members.map((x) => x.id)));
  socket.on("message", (m) => g.received.push(m));
  return g;
}

// A forged token is refused with a reason, and the connection goes on as a new visitor.
const forged = await new Promise((resolve) => {
  const s = io(url, { transports: ["websocket"], reconnection: false, auth: { token: "v1.eyJpZCI6ImdfeCJ9.AAAA" } });
  s.on("session:error", (e) => {
    resolve({ error: e.error, connected: s.connected });
    s.disconnect();
  });
  setTimeout(() => resolve(null), 5000);
});
if (!forged || !/does not match/.test(forged.error) || !forged.connected) fail(`forged token: ${JSON.stringify(forged)}`);

const guests = [guest("ann"), guest("bob")];
await until("both connected", () => guests.every((g) => g.connects === 1));
for (const g of guests) {
  const join = await g.socket.timeout(5000).emitWithAck("guest:join", { name: g.name });
  if (!join.ok) fail(`guest:join: ${join.error}`);
  g.id = join.guest.id;
  const r = await g.socket.timeout(5000).emitWithAck("room:join", { room });
  if (!r.ok) fail(`room:join: ${r.error}`);
}
await until("both see each other", () => guests.every((g) => g.members.length === 2));

const { stdout } = await promisify(execFile)(chatctl, ["reload"], { env: process.env }).catch((e) => fail(`reload: ${e.stderr}`));
if (!new RegExp(`reloaded \\S+: ${instances} replaced`).test(stdout)) fail(`unexpected reload output: ${stdout}`);

// With several instances a guest may move twice (its worker, then the one it moved to, replaced).
await until("both reconnected", () => guests.every((g) => g.connects >= 2 && g.socket.connected));
await until("identities restored", () => guests.every((g) => g.sessions.length >= 3));
for (const g of guests) {
  const restored = g.sessions[g.sessions.length - 1];
  if (restored.id !== g.id) fail(`${g.name} came back as ${restored.id}, was ${g.id}`);
}
// The member list told on each restore asks every worker, and leaves out one that does not answer
// within 500 ms (a loaded machine, a worker exiting): with several instances the messages below
// are the proof that both are back in the room.
if (instances === "1") {
  await until("back in the room together", () => guests.every((g) => g.members.length === 2 && g.members.includes(guests[0].id) && g.members.includes(guests[1].id)));
}

for (const g of guests) g.received = [];
for (const g of guests) {
  const ack = await g.socket.timeout(5000).emitWithAck("message", { room, text: `after the reload, ${g.name}` });
  if (!ack.ok) fail(`message after reload: ${ack.error}`);
}
await until("every message reached everyone", () => guests.every((g) => g.received.length === 2));

console.log(JSON.stringify({ ok: true, guests: guests.map((g) => ({ id: g.id, connects: g.connects })) }));
for (const g of guests) g.socket.disconnect();
process.exit(0);

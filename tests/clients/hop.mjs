// A guest hops hosts: it chats on host A, goes away while a writer on host B keeps talking, and comes
// back to B with its session token (issued by A, which has a secret of its own) and the id of the
// last message it saw. It must get the same identity, be back in ROOM without joining, receive what
// it missed in order and once, and be heard by the writer. A forged token is refused with a reason.
// Prints one JSON line; exits 1 with a reason on any failure.
//
// usage: node hop.mjs URL_A URL_B ROOM
import { io } from "socket.io-client";
import { deadline, fail, until } from "./common.mjs";

const [urlA, urlB, room] = process.argv.slice(2);
deadline(20);

function open(url, auth) {
  const socket = io(url, { transports: ["websocket"], reconnection: false, timeout: 5000, auth });
  const seen = { messages: [], history: [], sessions: [], errors: [] };
  socket.on("message", (m) => seen.messages.push(m));
  socket.on("history", (h) => seen.history.push(h));
  socket.on("session", (s) => seen.sessions.push(s));
  socket.on("session:error", (e) => seen.errors.push(e));
  return new Promise((resolve, reject) => {
    socket.on("connect_error", (e) => reject(new Error(`connect_error: ${e.message}`)));
    socket.on("connect", () => resolve({ socket, seen }));
  }).catch((e) => fail(e.message));
}

async function send(client, text) {
  const ack = await client.socket.timeout(5000).emitWithAck("message", { room, text }).catch((e) => fail(`message: ${e}`));
  if (!ack.ok) fail(`message refused: ${JSON.stringify(ack)}`);
  return ack.id;
}

const writer = await open(urlB, { name: "writer" });
const joined = await writer.socket.timeout(5000).emitWithAck("room:join", { room });
if (!joined.ok) fail(`writer join: ${JSON.stringify(joined)}`);

const hopper = await open(urlA, { name: "hopper" });
await until("hopper's first session", () => hopper.seen.sessions.length > 0);
const id = hopper.seen.sessions[0].guest.id;
const join = await hopper.socket.timeout(5000).emitWithAck("room:join", { room });
if (!join.ok) fail(`hopper join: ${JSON.stringify(join)}`);
const first = await send(hopper, "before the hop");
await until("hopper's own message", () => hopper.seen.messages.some((m) => m.id === first));
const token = hopper.seen.sessions.at(-1).token;
hopper.socket.disconnect();

const missedIds = [await send(writer, "while away 1"), await send(writer, "while away 2")];

const back = await open(urlB, { token, since: { [room]: first } });
await until("the session back", () => back.seen.sessions.length > 0);
if (back.seen.errors.length) fail(`token refused on the other host: ${JSON.stringify(back.seen.errors)}`);
const again = back.seen.sessions.at(-1).guest.id;
if (again !== id) fail(`identity changed across hosts: ${id} -> ${again}`);
await until("what was missed", () => back.seen.history.length > 0);
const recovered = back.seen.history.flatMap((h) => h.messages.map((m) => m.id));
if (JSON.stringify(recovered) !== JSON.stringify(missedIds)) {
  fail(`recovered ${JSON.stringify(recovered)}, expected ${JSON.stringify(missedIds)}`);
}
// Back in the room without joining: its message reaches the writer, once.
const after = await send(back, "back on another host");
await until("the writer hears the hopper", () => writer.seen.messages.some((m) => m.id === after));
await new Promise((r) => setTimeout(r, 200));
if (writer.seen.messages.filter((m) => m.id === after).length !== 1) fail("the writer got the message twice");

const forged = token.slice(0, -4) + (token.endsWith("AAAA") ? "BBBB" : "AAAA");
const intruder = await open(urlB, { token: forged });
await until("the forged token refused", () => intruder.seen.errors.length > 0);
if (intruder.seen.sessions.some((s) => s.guest.id === id)) fail("a forged token got the guest's identity");

console.log(JSON.stringify({ ok: true, id, recovered, error: intruder.seen.errors[0].error }));
for (const c of [writer, back, intruder]) c.socket.disconnect();
process.exit(0);

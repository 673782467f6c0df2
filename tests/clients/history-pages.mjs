// Fills ROOM with COUNT messages of SIZE characters, then reads the room's history back page by
// page, as a client that wants all of it does: a plain join gets the newest page and pages back
// with `room:history {before}`; a join with `since` gets the earliest after it and pages forward
// with `room:history {since}`. Prints one JSON line: the page sizes each way and whether every
// message came back once, in order. Exits 1 with a reason on any failure.
//
// usage: node history-pages.mjs URL ROOM COUNT SIZE
import { io } from "socket.io-client";
import { deadline, fail } from "./common.mjs";

const [url, room, count, size] = process.argv.slice(2);
deadline(20);

async function guest(name) {
  const socket = io(url, { transports: ["websocket"], reconnection: false, timeout: 5000, auth: { name } });
  socket.on("connect_error", (e) => fail(`connect_error: ${e.message}`));
  await new Promise((resolve) => socket.on("connect", resolve));
  return socket;
}

async function ask(socket, event, data) {
  const reply = await socket.timeout(5000).emitWithAck(event, data).catch((e) => fail(`${event}: ${e}`));
  if (!reply.ok) fail(`${event} refused: ${JSON.stringify(reply)}`);
  return reply;
}

const writer = await guest("writer");
await ask(writer, "room:join", { room });
const sent = [];
for (let i = 0; i < Number(count); i++) {
  sent.push((await ask(writer, "message", { room, text: `${i} `.padEnd(Number(size), "x") })).id);
}

// Back from the newest.
const back = await guest("back");
let reply = await ask(back, "room:join", { room });
let pages = [reply.missed.map((m) => m.id)];
while (reply.more) {
  reply = await ask(back, "room:history", { room, before: pages[0][0] });
  pages.unshift(reply.messages.map((m) => m.id));
}
const backward = pages.map((p) => p.length);
const allBack = pages.flat();

// Forward from the first.
const forth = await guest("forth");
reply = await ask(forth, "room:join", { room, since: sent[0] });
pages = [reply.missed.map((m) => m.id)];
while (reply.more) {
  reply = await ask(forth, "room:history", { room, since: pages.at(-1).at(-1) });
  pages.push(reply.messages.map((m) => m.id));
}
const forward = pages.map((p) => p.length);
const allForth = [sent[0], ...pages.flat()];

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
console.log(JSON.stringify({ ok: same(allBack, sent) && same(allForth, sent), backward, forward }));
process.exit(0);

// Presence in a crowd: COUNT guests join ROOM at once (each join's answer lists the joiner), a
// watcher sees them come; then one guest opens a second tab in the room and closes it (the guest
// has not left: no leave is told), and all COUNT leave at once (disconnect). The watcher must be
// told of each leave exactly once, and get down to a count of 1 and a member list of itself alone.
// Past 100 members the changes of one round come together, in one `room:presence` whose `changes`
// lists them (`told` and `changes` in the report say how many events carried how many changes).
// Prints one JSON line; exits 1 with a reason on any failure.
//
// usage: node presence.mjs URL COUNT ROOM
import { io } from "socket.io-client";
import { deadline, fail, until } from "./common.mjs";

const [url, countArg, room] = process.argv.slice(2);
const count = Number(countArg ?? 40);
deadline(25);
const ask = (s, event, data) => s.timeout(8000).emitWithAck(event, data).catch((e) => fail(`${event}: ${e}`));

async function guest(name, auth = { name }) {
  const socket = io(url, { transports: ["websocket"], reconnection: false, auth });
  const session = new Promise((resolve) => socket.on("session", resolve));
  await new Promise((resolve) => {
    socket.on("connect_error", (e) => fail(`${name}: connect_error: ${e.message}`));
    socket.on("connect", resolve);
  });
  const { token, guest: who } = await session;
  return { socket, token, id: who.id, name };
}

const watcher = await guest("watcher");
const presence = [];
const lists = [];
watcher.socket.on("room:presence", (p) => presence.push(p));
watcher.socket.on("room:members", (m) => lists.push(m.members.map((g) => g.id)));
if (!(await ask(watcher.socket, "room:join", { room })).ok) fail("watcher join refused");

const crowd = await Promise.all(Array.from({ length: count }, (_, i) => guest(`g${i}`)));
await Promise.all(
  crowd.map(async (g) => {
    const reply = await ask(g.socket, "room:join", { room });
    if (!reply.ok) fail(`${g.name}: join refused: ${JSON.stringify(reply)}`);
    if (!reply.members.some((m) => m.id === g.id)) fail(`${g.name}'s join answer does not list it`);
  }),
);
// Each event's changes: its `changes` when the round's changes came together, else itself.
const changes = (events) =>
  events.flatMap((p) => (p.changes ?? [p]).map((c) => ({ guest: c.guest, joined: c.joined, count: p.count })));
const joined = () => new Set(changes(presence).filter((p) => p.joined).map((p) => p.guest.id));
await until("the watcher told of every join", () => crowd.every((g) => joined().has(g.id)), 10_000);

// A second tab of the first guest comes into the room and goes: the guest is still there.
const first = crowd[0];
const tab = await guest(first.name, { token: first.token });
if (tab.id !== first.id) fail("the second tab is another guest");
if (!(await ask(tab.socket, "room:join", { room })).ok) fail("second tab join refused");
tab.socket.disconnect();
await new Promise((r) => setTimeout(r, 500));
const early = changes(presence).filter((p) => !p.joined && p.guest.id === first.id);
if (early.length) fail(`a guest whose other tab is still in the room was told as gone: ${JSON.stringify(early)}`);

const before = presence.length;
for (const g of crowd) g.socket.disconnect();
const left = () => changes(presence.slice(before)).filter((p) => !p.joined);
const missing = () => crowd.filter((g) => !left().some((p) => p.guest.id === g.id)).map((g) => g.name);
await until(
  () => `the watcher told of every leave (told ${left().length} of ${count}; not told: ${missing().slice(0, 5).join(", ")})`,
  () => left().length >= count,
  10_000,
);
await new Promise((r) => setTimeout(r, 300));
const ids = left().map((p) => p.guest.id);
if (ids.length !== count || new Set(ids).size !== count) fail(`told of ${ids.length} leaves (${new Set(ids).size} guests), expected ${count}`);
// Each worker tells of its own guests' leaves: the one that asks last finds the watcher alone.
const lowest = Math.min(...left().map((p) => p.count));
if (lowest !== 1) fail(`the leaves end at ${lowest} members, expected 1 (the watcher)`);
await until("a member list of the watcher alone", () => lists.some((l) => JSON.stringify(l) === JSON.stringify([watcher.id])), 5000);
watcher.socket.disconnect();
console.log(JSON.stringify({ ok: true, told: presence.length, changes: changes(presence).length }));
process.exit(0);

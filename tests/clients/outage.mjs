// Chat through a Redis outage, with the real socket.io-client v4. Guests a1 and a2 are on host A,
// b on host B; a1 sends a message every 120 ms (under the rate limit) the whole time (the traffic). The test drives the
// phases through stdin: after "ready" is printed it stops Redis and writes "down" once both hosts say
// so in /health, then restarts it and writes "up" once both are linked again.
// - Before: b hears a1 (through Redis); a2 hears a1.
// - Down: a2 keeps hearing a1, every message once and in order (local clients keep chatting).
// - Up: b hears a1 again (cross-host delivery resumes), a1 hears b; a guest joining on host B with
//   the last message it saw before the outage recovers what a1 sent during it, once each and in
//   order (host A appends them to the room's stream in Redis once Redis is back).
// Prints one JSON line; exits 1 with a reason on any failure.
//
// usage: node outage.mjs URL_A URL_B ROOM
import { io } from "socket.io-client";
import { deadline, fail, until as waitUntil } from "./common.mjs";
import { createInterface } from "node:readline";

const until = (what, check, ms = 10_000) => waitUntil(what, check, ms);

const [urlA, urlB, room] = process.argv.slice(2);
deadline(60);

const lines = createInterface({ input: process.stdin });
const commands = [];
lines.on("line", (l) => commands.push(l.trim()));
const command = (word) => until(`"${word}" on stdin`, () => commands.includes(word), 30_000);

async function guest(url, name) {
  const socket = io(url, { transports: ["websocket"], reconnection: false, timeout: 5000, auth: { name } });
  const heard = [];
  socket.on("message", (m) => heard.push(m));
  socket.on("disconnect", (why) => fail(`${name} was disconnected: ${why}`));
  await new Promise((resolve, reject) => {
    socket.on("connect_error", (e) => reject(e));
    socket.on("connect", resolve);
  }).catch((e) => fail(`${name}: connect_error ${e.message}`));
  const reply = await socket.timeout(5000).emitWithAck("room:join", { room }).catch((e) => fail(`${name} join: ${e}`));
  if (!reply.ok) fail(`${name} join refused: ${JSON.stringify(reply)}`);
  return { name, socket, heard };
}

const a1 = await guest(urlA, "a1");
const a2 = await guest(urlA, "a2");
const b = await guest(urlB, "b");

// The traffic: a1 talks all along; a refused or unacknowledged message fails the run.
const sent = []; // [phase, id]
let phase = "before";
let talking = true;
const traffic = (async () => {
  for (let i = 0; talking; i++) {
    // The phase it was sent in: its acknowledgement may come in the next one (a message published
    // as Redis is killed is acknowledged up to 2 s later), after it reached b through Redis.
    const sentIn = phase;
    const ack = await a1.socket.timeout(5000).emitWithAck("message", { room, text: `${sentIn} ${i}` }).catch((e) => fail(`a1 message: ${e}`));
    if (!ack.ok) fail(`a1's message refused during ${sentIn}: ${JSON.stringify(ack)}`);
    sent.push([sentIn, ack.id]);
    await new Promise((r) => setTimeout(r, 120));
  }
})();
const ids = (p) => sent.filter(([ph]) => ph === p).map(([, id]) => id);

await until("b hearing a1 through Redis", () => b.heard.length >= 3);
console.log("ready");
await command("down");
phase = "down";
await until("some traffic while Redis is down", () => ids("down").length >= 8);
console.log("restart");
await command("up");
phase = "up";
const upFirst = sent.length;
await until("b hearing a1 again after Redis returned", () => b.heard.some((m) => ids("up").includes(m.id)), 15_000);
const fromB = await b.socket.timeout(5000).emitWithAck("message", { room, text: "b is back" });
if (!fromB.ok) fail(`b's message refused: ${JSON.stringify(fromB)}`);
await until("a1 hearing b after Redis returned", () => a1.heard.some((m) => m.id === fromB.id));
talking = false;
await traffic;
await new Promise((r) => setTimeout(r, 300));

// a2 (same host as a1) heard every message of a1's, in order, once: before, during and after.
const heardByA2 = a2.heard.filter((m) => m.from.name === "a1").map((m) => m.id);
const all = sent.map(([, id]) => id);
if (JSON.stringify(heardByA2) !== JSON.stringify(all)) {
  const missing = all.filter((id) => !heardByA2.includes(id));
  fail(`a2 heard ${heardByA2.length} of ${all.length} (missing ${JSON.stringify(missing.slice(0, 5))}), or out of order / twice`);
}
// A late guest on host B, whose last message was the last one before the outage, recovers the
// outage's messages from Redis (asked again a few times: A appends them once it sees Redis back).
const before = ids("before").at(-1);
const down = ids("down");
let recovered = [];
for (let tries = 0; tries < 20; tries++) {
  const late = io(urlB, { transports: ["websocket"], reconnection: false, auth: { name: "late" } });
  await new Promise((resolve) => late.on("connect", resolve));
  const reply = await late.timeout(5000).emitWithAck("room:join", { room, since: before }).catch((e) => fail(`late join: ${e}`));
  late.disconnect();
  if (!reply.ok) fail(`late join refused: ${JSON.stringify(reply)}`);
  recovered = reply.missed.map((m) => m.id).filter((id) => down.includes(id));
  if (recovered.length === down.length) break;
  await new Promise((r) => setTimeout(r, 250));
}
if (JSON.stringify(recovered) !== JSON.stringify(down)) {
  fail(`a late guest on B recovered ${recovered.length} of the ${down.length} outage messages (or out of order / twice)`);
}

const heardByB = new Set(b.heard.map((m) => m.id));
if (b.heard.length !== heardByB.size) fail("b heard a message twice");
console.log(JSON.stringify({
  ok: true,
  sent: all.length,
  down: ids("down").length,
  b_heard_during_outage: ids("down").filter((id) => heardByB.has(id)).length,
  b_heard_after: ids("up").filter((id) => heardByB.has(id)).length,
  recovered_on_b: recovered.length,
  up_sent: sent.length - upFirst,
}));
for (const c of [a1, a2, b]) {
  c.socket.off("disconnect");
  c.socket.disconnect();
}
process.exit(0);

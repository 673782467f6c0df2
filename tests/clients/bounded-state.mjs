// What a worker keeps, bounded (it runs with HISTORY_ROOMS=10 and CALL_RING_TIMEOUT=1s): a message
// in each of 30 rooms, then what a late joiner recovers of the first and the last room; a call
// nobody answers and one that is answered, and which of them ends by itself. Prints one JSON line.
// usage: node bounded-state.mjs URL
import { io } from "socket.io-client";
import { deadline, fail } from "./common.mjs";

const [url] = process.argv.slice(2);
deadline(30);
const ask = (s, event, data) => s.timeout(5000).emitWithAck(event, data).catch((e) => fail(`${event}: ${e}`));

async function guest(name) {
  const s = io(url, { transports: ["websocket"], reconnection: false });
  const g = { s, ends: [] };
  s.on("call:end", (e) => g.ends.push(e));
  await new Promise((r) => s.on("connect", r));
  const join = await ask(s, "guest:join", { name });
  if (!join.ok) fail(`guest:join ${name}: ${join.error}`);
  g.id = join.guest.id;
  return g;
}

const writer = await guest("writer");
for (let i = 0; i < 30; i++) {
  const room = `room-${i}`;
  if (!(await ask(writer.s, "room:join", { room })).ok) fail(`join ${room}`);
  if (!(await ask(writer.s, "message", { room, text: `in ${room}` })).ok) fail(`message ${room}`);
  if (!(await ask(writer.s, "room:leave", { room })).ok) fail(`leave ${room}`);
}
const late = await guest("late");
const first = (await ask(late.s, "room:join", { room: "room-0" })).missed.length;
const last = (await ask(late.s, "room:join", { room: "room-29" })).missed.length;

const ann = await guest("ann");
const bob = await guest("bob");
const unanswered = await ask(ann.s, "call:invite", { to: [bob.id] });
const answered = await ask(ann.s, "call:invite", { to: [bob.id] });
if (!unanswered.ok || !answered.ok) fail("call:invite");
if (!(await ask(bob.s, "call:accept", { call: answered.call })).ok) fail("call:accept");
await new Promise((r) => setTimeout(r, 3000));
const ended = (g) => g.ends.map((e) => ({ call: e.call === unanswered.call ? "unanswered" : "answered", reason: e.reason }));

console.log(JSON.stringify({ recovered: { first, last }, ann_told: ended(ann), bob_told: ended(bob) }));
process.exit(0);

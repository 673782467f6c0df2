// What a hostile client could do through the gaps of the rate limits, measured: a flood of call
// signals, invitations naming one guest thousands of times, more rooms than a socket may hold, and
// a session token reconnecting in a loop. Prints one JSON line of counts; exits 1 only when the
// client itself cannot go on (the test judges the counts).
// usage: node hostile-limits.mjs URL
import { io } from "socket.io-client";
import { deadline, fail } from "./common.mjs";

const [url] = process.argv.slice(2);
deadline(40);
const ask = (s, event, data) => s.timeout(10000).emitWithAck(event, data).catch((e) => fail(`${event}: ${e}`));

async function connect(auth) {
  const s = io(url, { transports: ["websocket"], reconnection: false, auth });
  const c = { s, session: null, errors: [] };
  s.on("session", (x) => (c.session = x));
  s.on("chat:error", (e) => c.errors.push(e));
  s.on("connect_error", (e) => fail(`connect_error: ${e.message}`));
  await new Promise((r) => s.on("connect", r));
  return c;
}

async function guest(name) {
  const c = await connect({});
  const join = await ask(c.s, "guest:join", { name });
  if (!join.ok) fail(`guest:join ${name}: ${join.error}`);
  c.id = join.guest.id;
  c.token = join.token;
  return c;
}

const report = {};
const ann = await guest("ann");
const bob = await guest("bob");

// Invitations: 3,000 entries naming the caller, then 3,000 naming one other guest.
let begun = Date.now();
const self = await ask(ann.s, "call:invite", { to: Array(3000).fill(ann.id) });
report.self_invite = { ok: self.ok, error: self.error ?? null, ms: Date.now() - begun };
begun = Date.now();
const call = await ask(ann.s, "call:invite", { to: Array(3000).fill(bob.id) });
report.repeated_invite = { ok: call.ok, error: call.error ?? null, ms: Date.now() - begun };
if (!call.ok) fail(`an invitation of bob: ${call.error}`);

// 500 offers of 2 KB, all at once, without acknowledgements (a flood does not wait for answers):
// what bob receives within a second.
let received = 0;
bob.s.on("offer", () => received++);
const sdp = "v=0 ".padEnd(2000, "x");
for (let i = 0; i < 500; i++) ann.s.emit("offer", { call: call.call, to: bob.id, sdp });
await new Promise((r) => setTimeout(r, 1000));
report.offers = { relayed: received, flooder_connected: ann.s.connected };

// Rooms: 25 asked, one at a time.
let joined = 0;
let refusal = null;
for (let i = 0; i < 25; i++) {
  const reply = await ask(bob.s, "room:join", { room: `room-${i}` });
  if (reply.ok) joined++;
  else refusal ??= reply.error;
}
report.rooms = { joined, refusal };

// A token holding 12 rooms, reconnecting 20 times in a row.
const carol = await guest("carol");
for (let i = 0; i < 12; i++) {
  const reply = await ask(carol.s, "room:join", { room: `carol-${i}` });
  if (!reply.ok) fail(`carol's room ${i}: ${reply.error}`);
}
const token = carol.session.token;
carol.s.disconnect();
const restored = [];
for (let i = 0; i < 20; i++) {
  const c = await connect({ token });
  // The session comes once the restore is done; a refusal is told before it.
  const until = Date.now() + 5000;
  while (!c.session && Date.now() < until) await new Promise((r) => setTimeout(r, 5));
  if (!c.session) fail(`reconnect ${i}: no session`);
  const skipped = c.errors.filter((e) => e.limit === "restores").flatMap((e) => e.rooms ?? []);
  restored.push(12 - skipped.length);
  c.s.disconnect();
}
report.restores = { per_reconnect: restored, total: restored.reduce((a, b) => a + b, 0) };

console.log(JSON.stringify(report));
process.exit(0);

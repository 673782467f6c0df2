// Wire-compatibility check with the real socket.io-client v4: COUNT guests (placed as PLACEMENT
// says, below) join ROOM, each sends one message, and every guest must receive every message and see the full
// member list. Prints one JSON line with what happened; exits 1 with a reason on any failure.
//
// usage: node chat.mjs URL[,URL...] COUNT ROOM [same|spread]
// With several URLs (separate daemons: "hosts" sharing one Redis), guest i connects to URL i mod n,
// and an instance is named by its URL's position and its instance id.
// Cluster mode spreads connections over instances. PLACEMENT `same` (the default) keeps only clients
// that land on the first client's instance; `spread` keeps only clients that land on an instance no
// kept client is on, so everything checked below crosses the supervisor's bus between workers.
// Clients that land elsewhere are closed and retried (bounded).
import { io } from "socket.io-client";

const [url, countArg, room, placement = "same"] = process.argv.slice(2);
const count = Number(countArg ?? 2);
if (!["same", "spread"].includes(placement)) fail(`placement must be same or spread, not ${placement}`);
const deadline = setTimeout(() => fail("timed out after 15 s"), 15_000);

function fail(reason) {
  console.log(JSON.stringify({ ok: false, reason }));
  process.exit(1);
}

const urls = url.split(",");

function connect(name, target = urls[0]) {
  return new Promise((resolve, reject) => {
    // websocket only: the placement below needs one connection per client (polling.mjs covers polling).
    const socket = io(target, { transports: ["websocket"], reconnection: false, timeout: 5000 });
    socket.on("connect_error", (e) => reject(new Error(`connect_error: ${e.message}`)));
    socket.on("connect", () => {
      socket.timeout(5000).emit("guest:join", { name }, (err, reply) => {
        if (err || !reply?.ok) return reject(new Error(`guest:join failed: ${err ?? JSON.stringify(reply)}`));
        const instance = urls.length > 1 ? `${urls.indexOf(target)}/${reply.instance}` : reply.instance;
        resolve({ socket, guest: reply.guest, instance, target });
      });
    });
  });
}

const clients = [];
let tries = 0;
while (clients.length < count) {
  if (++tries > 40) fail(`could not place ${count} clients (${placement}) in 40 tries`);
  const client = await connect(`guest-${clients.length}`, urls[clients.length % urls.length]).catch((e) => fail(e.message));
  const misplaced =
    placement === "same"
      ? clients.length > 0 && client.instance !== clients[0].instance
      : clients.some((c) => c.instance === client.instance);
  if (misplaced) {
    client.socket.disconnect();
    continue;
  }
  client.received = [];
  client.direct = [];
  client.socket.on("message", (m) => client.received.push(m));
  client.socket.on("dm", (m) => client.direct.push(m));
  clients.push(client);
}

for (const c of clients) {
  const reply = await c.socket.timeout(5000).emitWithAck("room:join", { room }).catch((e) => fail(`room:join: ${e}`));
  if (!reply.ok) fail(`room:join refused: ${reply.error}`);
  c.members = reply.members.map((m) => m.id);
}
const last = clients[clients.length - 1];
if (last.members.length !== count) fail(`last joiner saw ${last.members.length} members, expected ${count}`);

const sent = [];
for (const c of clients) {
  const text = `hello from ${c.guest.name}`;
  const ack = await c.socket.timeout(5000).emitWithAck("message", { room, text }).catch((e) => fail(`message: ${e}`));
  if (!ack.ok || !ack.id) fail(`message not acknowledged: ${JSON.stringify(ack)}`);
  sent.push({ id: ack.id, from: c.guest.id, text });
}

// Every client must receive every message (its own included), with sender and text intact.
const until = Date.now() + 5000;
while (clients.some((c) => c.received.length < sent.length) && Date.now() < until) {
  await new Promise((r) => setTimeout(r, 20));
}
// A little longer, so that a duplicate delivery (through the bus and locally) would show.
await new Promise((r) => setTimeout(r, 200));
for (const c of clients) {
  for (const s of sent) {
    const copies = c.received.filter((m) => m.id === s.id);
    if (copies.length > 1) fail(`${c.guest.name} received ${s.id} ${copies.length} times`);
    const got = copies[0];
    if (!got) fail(`${c.guest.name} did not receive ${s.id}`);
    if (got.text !== s.text || got.from.id !== s.from || got.room !== room || typeof got.time !== "number") {
      fail(`${c.guest.name} received a wrong message: ${JSON.stringify(got)}`);
    }
  }
}

// A late joiner on another instance than the first guest's recovers every message, the first
// guest's included, in the order they were sent: the recovery history is kept on every worker.
if (placement === "spread") {
  let late;
  for (let i = 0; i < 40 && !late; i++) {
    const c = await connect("late", last.target).catch((e) => fail(e.message));
    if (c.instance === last.instance) late = c;
    else c.socket.disconnect();
  }
  if (!late) fail("could not place a late joiner on the last guest's instance");
  const reply = await late.socket.timeout(5000).emitWithAck("room:join", { room }).catch((e) => fail(`late join: ${e}`));
  const missed = (reply.missed ?? []).map((m) => m.id);
  if (JSON.stringify(missed) !== JSON.stringify(sent.map((s) => s.id))) {
    fail(`late joiner recovered ${JSON.stringify(missed)}, expected ${JSON.stringify(sent.map((s) => s.id))}`);
  }
  late.socket.disconnect();
}

// A direct message from the last guest reaches the first, wherever each is connected.
const first = clients[0];
const dm = await last.socket.timeout(5000).emitWithAck("dm", { to: first.guest.id, text: "psst" }).catch((e) => fail(`dm: ${e}`));
if (!dm.ok) fail(`dm refused: ${JSON.stringify(dm)}`);
const dmUntil = Date.now() + 5000;
while (!first.direct.some((m) => m.id === dm.id) && Date.now() < dmUntil) await new Promise((r) => setTimeout(r, 20));
await new Promise((r) => setTimeout(r, 200));
const dmCopies = first.direct.filter((m) => m.id === dm.id);
if (dmCopies.length > 1) fail(`the dm arrived ${dmCopies.length} times`);
const gotDm = dmCopies[0];
if (!gotDm || gotDm.text !== "psst" || gotDm.from.id !== last.guest.id) fail(`dm not delivered: ${JSON.stringify(first.direct)}`);

// A full call signalling exchange between the first and the last guest, each event exactly once.
const seen = new Map(); // client -> [event, payload]
for (const c of [first, last]) {
  seen.set(c, []);
  for (const e of ["call:invite", "call:accept", "offer", "answer", "ice-candidate", "call:end"]) {
    c.socket.on(e, (payload) => seen.get(c).push([e, payload]));
  }
}
async function expectOnce(c, event) {
  const until = Date.now() + 5000;
  while (!seen.get(c).some(([e]) => e === event) && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
  const got = seen.get(c).filter(([e]) => e === event);
  if (got.length !== 1) fail(`${c.guest.name} got ${event} ${got.length} times`);
  return got[0][1];
}
async function ok(c, event, payload) {
  const reply = await c.socket.timeout(5000).emitWithAck(event, payload).catch((e) => fail(`${event}: ${e}`));
  if (!reply.ok) fail(`${event} refused: ${JSON.stringify(reply)}`);
  return reply;
}
if (count >= 2) {
  const { call } = await ok(first, "call:invite", { to: [last.guest.id], media: "video" });
  const invite = await expectOnce(last, "call:invite");
  if (invite.call !== call || invite.from.id !== first.guest.id) fail(`wrong invite: ${JSON.stringify(invite)}`);
  await ok(last, "call:accept", { call });
  await expectOnce(first, "call:accept");
  await ok(first, "offer", { call, to: last.guest.id, sdp: "v=0 offer" });
  const offer = await expectOnce(last, "offer");
  if (offer.sdp !== "v=0 offer" || offer.from.id !== first.guest.id) fail(`wrong offer: ${JSON.stringify(offer)}`);
  await ok(last, "answer", { call, to: first.guest.id, sdp: "v=0 answer" });
  if ((await expectOnce(first, "answer")).sdp !== "v=0 answer") fail("wrong answer");
  await ok(last, "ice-candidate", { call, to: first.guest.id, candidate: "candidate:1" });
  if ((await expectOnce(first, "ice-candidate")).candidate !== "candidate:1") fail("wrong candidate");
  await ok(first, "call:end", { call });
  await expectOnce(last, "call:end");
  // Over means over, on every worker: signalling into the ended call is refused.
  const after = await last.socket.timeout(5000).emitWithAck("offer", { call, to: first.guest.id, sdp: "x" });
  if (after.ok !== false) fail(`an ended call still relays: ${JSON.stringify(after)}`);
  await new Promise((r) => setTimeout(r, 200));
  for (const c of [first, last]) {
    const events = seen.get(c).map(([e]) => e);
    if (new Set(events).size !== events.length) fail(`${c.guest.name} got duplicates: ${events}`);
  }
}

// Bad input closes nothing: an invalid message gets an error ack and the socket stays connected.
const bad = await clients[0].socket.timeout(5000).emitWithAck("message", { room: 42 }).catch((e) => fail(`bad message: ${e}`));
if (bad.ok !== false || !clients[0].socket.connected) fail(`invalid payload was not refused cleanly: ${JSON.stringify(bad)}`);

console.log(JSON.stringify({
  ok: true,
  instance: clients[0].instance,
  instances: [...new Set(clients.map((c) => c.instance))],
  clients: clients.map((c) => ({ id: c.guest.id, received: c.received.length })),
  tries,
}));
clearTimeout(deadline);
for (const c of clients) c.socket.disconnect();
process.exit(0);

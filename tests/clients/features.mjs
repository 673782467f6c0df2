// The chat features of one worker with the real socket.io-client: typing, direct messages,
// recovery of missed messages, rate limits, an oversized packet. Prints one JSON line; exits 1 with
// a reason on the first failure.
// usage: node features.mjs URL
import { io } from "socket.io-client";
import { deadline, fail, until } from "./common.mjs";

const [url] = process.argv.slice(2);
deadline(30);
const ask = (s, event, data) => s.timeout(5000).emitWithAck(event, data).catch((e) => fail(`${event}: ${e}`));

async function guest(name) {
  const s = io(url, { transports: ["websocket"], reconnection: false });
  const g = { s, name, typing: [], dms: [], messages: [], closed: false, signals: [], ice: null };
  for (const e of ["call:invite", "call:accept", "call:reject", "call:end", "call:leave", "offer", "answer", "ice-candidate"]) {
    s.on(e, (body) => g.signals.push({ e, body }));
  }
  s.on("ice:servers", (c) => (g.ice = c));
  s.on("stats", (st) => (g.stats = st));
  s.on("typing", (t) => g.typing.push(t));
  s.on("dm", (m) => g.dms.push(m));
  s.on("message", (m) => g.messages.push(m));
  g.presence = [];
  s.on("room:presence", (p) => g.presence.push(p));
  s.on("disconnect", () => (g.closed = true));
  await new Promise((r) => s.on("connect", r));
  const join = await ask(s, "guest:join", { name });
  if (!join.ok) fail(`guest:join ${name}: ${join.error}`);
  g.id = join.guest.id;
  return g;
}

// Origins (the worker runs with CORS_ORIGINS): a page of another origin is refused, a listed
// wildcard subdomain is let in.
const fromOrigin = (origin) =>
  new Promise((resolve) => {
    const s = io(url, { transports: ["websocket"], reconnection: false, extraHeaders: { origin } });
    s.on("connect", () => resolve({ ok: true, s }));
    s.on("connect_error", (e) => resolve({ ok: false, error: e.message, s }));
  });
const evil = await fromOrigin("https://evil.example");
if (evil.ok || !/origin not allowed/.test(evil.error)) fail(`a disallowed origin: ${JSON.stringify({ ok: evil.ok, error: evil.error })}`);
evil.s.close();
const preview = await fromOrigin("https://pr-42.vercel.app");
if (!preview.ok) fail(`an allowed origin was refused: ${preview.error}`);
preview.s.close();

const ann = await guest("ann");
const bob = await guest("bob");
for (const g of [ann, bob]) if (!(await ask(g.s, "room:join", { room: "lobby" })).ok) fail("room:join");
if ((await ask(ann.s, "room:join", { room: "@guest:x" })).ok) fail("an internal room name was accepted");

// Presence: ann saw bob come in (a delta, with the new count), and sees a visitor come and go.
await until("ann sees bob's arrival", () => ann.presence.some((p) => p.guest.id === bob.id && p.joined && p.count === 2));
const visitor = await guest("visitor");
await ask(visitor.s, "room:join", { room: "lobby" });
await until("ann sees the visitor arrive", () => ann.presence.some((p) => p.guest.id === visitor.id && p.joined && p.count === 3));
visitor.s.disconnect();
await until("ann sees the visitor leave", () => ann.presence.some((p) => p.guest.id === visitor.id && !p.joined && p.count === 2));

// The live statistics broadcast (every 200 ms here).
await until("a stats broadcast", () => ann.stats && ann.stats.users >= 2 && ann.stats.rooms >= 1);
if (ann.stats.scope !== "cluster" || ann.stats.workers !== 1 || typeof ann.stats.local?.messages_per_second !== "number") fail(`stats: ${JSON.stringify(ann.stats)}`);

// Typing reaches the others, not the typist.
if (!(await ask(bob.s, "typing", { room: "lobby", typing: true })).ok) fail("typing refused");
await until("ann sees bob typing", () => ann.typing.some((t) => t.guest.id === bob.id && t.typing));
if (bob.typing.length) fail("the typist received its own typing event");

// Direct messages reach the addressee only (and the sender's own sockets).
const dm = await ask(ann.s, "dm", { to: bob.id, text: "psst <b>not html</b>" });
if (!dm.ok) fail(`dm: ${dm.error}`);
await until("bob gets the dm", () => bob.dms.length === 1);
if (bob.dms[0].text !== "psst <b>not html</b>" || bob.dms[0].from.id !== ann.id) fail(`dm content: ${JSON.stringify(bob.dms[0])}`);
const nobody = await ask(ann.s, "dm", { to: "g_nobody", text: "hi" });
// Refusals keep their text and carry a stable code beside it.
if (nobody.ok || nobody.code !== "not_connected" || nobody.error !== 'guest "g_nobody" is not connected') fail(`a dm to nobody: ${JSON.stringify(nobody)}`);

// Missed messages: a late joiner with the id of the last one it saw gets the rest, in order, once.
const ids = [];
for (const text of ["one", "two", "three"]) ids.push((await ask(ann.s, "message", { room: "lobby", text })).id);
const carol = await guest("carol");
const late = await ask(carol.s, "room:join", { room: "lobby", since: ids[0] });
const missed = late.missed.map((m) => m.text);
if (JSON.stringify(missed) !== JSON.stringify(["two", "three"])) fail(`missed: ${JSON.stringify(missed)}`);

// ICE servers with time-limited TURN credentials (the worker runs with ICE_SERVERS and TURN_SECRET).
await until("ice servers delivered", () => ann.ice !== null);
const turn = ann.ice.iceServers.find((s) => s.urls.some((u) => u.startsWith("turn:")));
if (!turn || !turn.username.endsWith(`:${ann.id}`) || !turn.credential) fail(`ice: ${JSON.stringify(ann.ice)}`);

// A call: invite, accept, offer/answer/ICE relayed only between participants, end.
const seen = (g, e, n = 1) => g.signals.filter((s) => s.e === e).length >= n;
const invite = await ask(ann.s, "call:invite", { to: [bob.id], media: "video" });
if (!invite.ok) fail(`call:invite: ${invite.error}`);
const call = invite.call;
await until("bob invited", () => seen(bob, "call:invite"));
if (!(await ask(bob.s, "call:accept", { call })).ok) fail("call:accept");
await until("ann told of the accept", () => seen(ann, "call:accept"));
if (!(await ask(ann.s, "offer", { call, to: bob.id, sdp: "v=0 offer" })).ok) fail("offer");
if (!(await ask(bob.s, "answer", { call, to: ann.id, sdp: "v=0 answer" })).ok) fail("answer");
if (!(await ask(ann.s, "ice-candidate", { call, to: bob.id, candidate: { candidate: "c1" } })).ok) fail("ice");
await until("signals relayed", () => seen(bob, "offer") && seen(ann, "answer") && seen(bob, "ice-candidate"));
const offer = bob.signals.find((s) => s.e === "offer").body;
if (offer.sdp !== "v=0 offer" || offer.from.id !== ann.id) fail(`offer relayed wrong: ${JSON.stringify(offer)}`);
if ((await ask(carol.s, "offer", { call, to: bob.id, sdp: "intruder" })).ok) fail("a non-participant's offer was relayed");
if (bob.signals.filter((s) => s.e === "offer").length !== 1) fail("the intruder's offer reached bob");
if (!(await ask(ann.s, "call:end", { call })).ok) fail("call:end");
await until("bob told the call ended", () => seen(bob, "call:end"));
if (carol.signals.length) fail(`carol saw signals of a call she was not in: ${JSON.stringify(carol.signals)}`);

// A participant who disconnects ends a 1:1 call for the other.
const dave = await guest("dave");
const second = await ask(dave.s, "call:invite", { to: [ann.id], media: "audio" });
if (!second.ok) fail(`second call: ${second.error}`);
await until("ann invited again", () => seen(ann, "call:invite", 1));
dave.s.disconnect();
await until("ann told the call ended", () => seen(ann, "call:end"));

// A flood is refused past the burst; the others keep chatting; a socket that keeps going is cut off.
// Refusals are also told as `chat:error` (for events sent without an acknowledgement), at most once
// a second however many there are.
const flooder = await guest("flood");
const told = [];
flooder.s.on("chat:error", (e) => told.push(e));
await ask(flooder.s, "room:join", { room: "lobby" });
let refused = 0;
const flooding = Date.now();
for (let i = 0; i < 40; i++) {
  const r = await ask(flooder.s, "message", { room: "lobby", text: `spam ${i}` });
  if (!r.ok && r.error === "rate limited" && r.code === "rate_limited") refused++;
}
if (refused < 10) fail(`only ${refused} of 40 flood messages refused`);
await until("the flooder told it is refused", () => told.length > 0);
if (told[0].error !== "rate limited" || told[0].code !== "rate_limited" || told[0].limit !== "messages") fail(`chat:error: ${JSON.stringify(told[0])}`);
if (told.length > (Date.now() - flooding) / 1000 + 1) fail(`told ${told.length} times in ${Date.now() - flooding} ms`);
if (!(await ask(bob.s, "message", { room: "lobby", text: "still here" })).ok) fail("bob was limited by someone else's flood");
// Joins are limited too (each asks every worker for the member list and tells the whole room).
let joinsRefused = 0;
for (let i = 0; i < 30; i++) {
  const r = await ask(flooder.s, "room:join", { room: `hop-${i}` });
  if (!r.ok && r.error === "rate limited") joinsRefused++;
}
if (joinsRefused < 10) fail(`only ${joinsRefused} of 30 rapid joins refused`);
if (!(await ask(bob.s, "room:join", { room: "elsewhere" })).ok) fail("bob's join was limited by someone else's flood");
for (let i = 0; i < 80 && !flooder.closed; i++) flooder.s.emit("message", { room: "lobby", text: "more" });
await until("the abusive socket disconnected", () => flooder.closed);

// An oversized packet closes that one connection; the worker and the others go on.
const big = await guest("big");
big.s.emit("message", { room: "lobby", text: "x".repeat(200_000) });
await until("the oversized sender disconnected", () => big.closed);
if (!(await ask(ann.s, "message", { room: "lobby", text: "after the big one" })).ok) fail("ann broken by another socket's packet");

console.log(JSON.stringify({ ok: true, refused }));
for (const g of [ann, bob, carol]) g.s.disconnect();
process.exit(0);

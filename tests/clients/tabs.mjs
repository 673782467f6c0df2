// A guest with two tabs on two different instances is in a call with another guest: closing one tab
// keeps the call (the other tab still signals), closing the last one ends it for the other guest.
// Prints one JSON line; exits 1 with a reason on any failure.
//
// usage: node tabs.mjs URL
import { io } from "socket.io-client";
import { deadline, fail, until } from "./common.mjs";

const [url] = process.argv.slice(2);
deadline(30);
const ask = (s, event, data) => s.timeout(5000).emitWithAck(event, data).catch((e) => fail(`${event}: ${e}`));

function open(auth) {
  const s = io(url, { transports: ["websocket"], reconnection: false, auth });
  const seen = [];
  for (const e of ["call:invite", "call:accept", "call:end", "call:leave", "offer", "session"]) s.on(e, (b) => seen.push([e, b]));
  return new Promise((resolve) => s.on("connect", () => resolve({ s, seen }))).then(async (tab) => {
    // guest:join (again, for a restored tab: the same id) tells which instance serves the tab.
    await until("the session", () => !auth.token || tab.seen.some(([e]) => e === "session"));
    const reply = await ask(s, "guest:join", { name: auth.name ?? "ann" });
    if (!reply.ok) fail(`guest:join: ${JSON.stringify(reply)}`);
    return { ...tab, id: reply.guest.id, instance: reply.instance, token: reply.token };
  });
}

const tab1 = await open({ name: "ann" });
let tab2;
for (let i = 0; i < 40 && !tab2; i++) {
  const t = await open({ token: tab1.token, name: "ann" });
  if (t.instance !== tab1.instance) tab2 = t;
  else t.s.disconnect();
}
if (!tab2) fail("could not place the second tab on another instance");
if (tab2.id !== tab1.id) fail(`the second tab is someone else: ${tab2.id} vs ${tab1.id}`);
const bob = await open({ name: "bob" });

const { call } = await ask(tab1.s, "call:invite", { to: [bob.id], media: "audio" });
await until("bob invited", () => bob.seen.some(([e]) => e === "call:invite"));
if (!(await ask(bob.s, "call:accept", { call })).ok) fail("accept refused");

tab1.s.disconnect();
// Nothing to wait for: the check is that no call:end comes. Tab 1's worker handles the disconnect
// (and its 500 ms cluster-wide question) on its own, unordered with anything tab 2 could do, so a
// bounded pause longer than that question is the only witness.
await new Promise((r) => setTimeout(r, 800));
const ended = bob.seen.filter(([e]) => e === "call:end" || e === "call:leave");
if (ended.length) fail(`closing one of two tabs ended the call for bob: ${JSON.stringify(ended)}`);
const offer = await ask(tab2.s, "offer", { call, to: bob.id, sdp: "v=0 from tab 2" });
if (!offer.ok) fail(`the remaining tab cannot signal: ${JSON.stringify(offer)}`);
await until("bob gets tab 2's offer", () => bob.seen.some(([e, b]) => e === "offer" && b.sdp === "v=0 from tab 2"));

tab2.s.disconnect();
await until("bob told the call is over", () => bob.seen.some(([e, b]) => (e === "call:end" || e === "call:leave") && b.call === call));
console.log(JSON.stringify({ ok: true, instances: [tab1.instance, tab2.instance] }));
bob.s.disconnect();
process.exit(0);

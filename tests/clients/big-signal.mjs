// Two guests in a call; one sends an offer of SIZE characters (a worker allowing packets that
// large relays it to the other through the bus). Prints one JSON line with the offer's answer.
// usage: node big-signal.mjs URL SIZE
import { io } from "socket.io-client";
import { deadline, fail } from "./common.mjs";

const [url, size] = process.argv.slice(2);
deadline(30);
const ask = (s, event, data) => s.timeout(20000).emitWithAck(event, data).catch((e) => fail(`${event}: ${e}`));

async function guest(name) {
  const s = io(url, { transports: ["websocket"], reconnection: false });
  await new Promise((r) => s.on("connect", r));
  const join = await ask(s, "guest:join", { name });
  if (!join.ok) fail(`guest:join ${name}: ${join.error}`);
  return { s, id: join.guest.id };
}

const ann = await guest("ann");
const bob = await guest("bob");
const call = await ask(ann.s, "call:invite", { to: [bob.id] });
if (!call.ok) fail(`call:invite: ${call.error}`);
const offer = await ask(ann.s, "offer", { call: call.call, to: bob.id, sdp: "v=0 ".padEnd(Number(size), "x") });
console.log(JSON.stringify({ ok: true, offer }));
process.exit(0);

// One client address flooding a cluster from two sockets on two different instances: each sends a
// message every 25 ms for SECONDS. Prints one JSON line with how many were accepted and refused
// ("rate limited") in all; exits 1 with a reason on any other failure.
//
// usage: node address-flood.mjs URL SECONDS
import { io } from "socket.io-client";
import { deadline, fail } from "./common.mjs";

const [url, secondsArg] = process.argv.slice(2);
const seconds = Number(secondsArg ?? 3);
deadline(seconds + 22);
const ask = (s, event, data) => s.timeout(5000).emitWithAck(event, data).catch((e) => fail(`${event}: ${e}`));

// Which instance serves a socket, from the worker's first `stats` broadcast: placing the sockets
// must not spend joins, which count against the address's buckets too.
async function connect() {
  const socket = io(url, { transports: ["websocket"], reconnection: false });
  const stats = new Promise((resolve) => socket.once("stats", resolve));
  socket.on("connect_error", (e) => fail(`connect_error: ${e.message}`));
  const { instance } = await stats;
  return { socket, instance };
}

const first = await connect();
let second;
for (let i = 0; i < 40 && !second; i++) {
  const c = await connect();
  if (c.instance !== first.instance) second = c;
  else c.socket.disconnect();
}
if (!second) fail("could not place the second socket on another instance in 40 tries");
for (const [c, name] of [[first, "a"], [second, "b"]]) {
  const reply = await ask(c.socket, "guest:join", { name });
  if (!reply.ok) fail(`guest:join: ${JSON.stringify(reply)}`);
}
for (const c of [first, second]) {
  const joined = await ask(c.socket, "room:join", { room: "flood" });
  if (!joined.ok) fail(`room:join: ${JSON.stringify(joined)}`);
}

// The joins above spent from the address's buckets: let them fill up again first.
await new Promise((res) => setTimeout(res, 2000));

let accepted = 0;
let refused = 0;
const end = Date.now() + seconds * 1000;
await Promise.all(
  [first, second].map(async (c) => {
    while (Date.now() < end) {
      const r = await ask(c.socket, "message", { room: "flood", text: "x" });
      if (r.ok) accepted++;
      else if (r.error === "rate limited") refused++;
      else fail(`unexpected reply: ${JSON.stringify(r)}`);
      await new Promise((res) => setTimeout(res, 25));
    }
  }),
);
for (const c of [first, second]) c.socket.disconnect();
console.log(JSON.stringify({ ok: true, accepted, refused, instances: [first.instance, second.instance] }));
process.exit(0);

// Two guests of one host on two different instances, in one room, while Redis goes away: x sends
// 20 messages during the outage and y must hear every one, once and in order (the workers of one
// host keep sharing rooms through the daemon's bus). The test drives the phases through stdin:
// after "ready" is printed it stops Redis and writes "down" once the instances say so.
// Prints one JSON line; exits 1 only when the client itself cannot go on.
//
// usage: node host-outage.mjs URL ROOM
import { io } from "socket.io-client";
import { createInterface } from "node:readline";
import { deadline, fail, until } from "./common.mjs";

const [url, room] = process.argv.slice(2);
deadline(60);
const commands = [];
createInterface({ input: process.stdin }).on("line", (l) => commands.push(l.trim()));

async function guest(name, not) {
  for (let i = 0; i < 40; i++) {
    const s = io(url, { transports: ["websocket"], reconnection: false, forceNew: true });
    await new Promise((r) => s.on("connect", r));
    const join = await s.timeout(5000).emitWithAck("guest:join", { name }).catch((e) => fail(`guest:join: ${e}`));
    if (join.instance !== not) {
      const heard = [];
      s.on("message", (m) => heard.push(m.id));
      const reply = await s.timeout(5000).emitWithAck("room:join", { room }).catch((e) => fail(`room:join: ${e}`));
      if (!reply.ok) fail(`room:join: ${JSON.stringify(reply)}`);
      return { s, instance: join.instance, heard };
    }
    s.disconnect();
  }
  fail("could not place two guests on two instances");
}

const x = await guest("x", undefined);
const y = await guest("y", x.instance);
// Through Redis first.
const hello = await x.s.timeout(5000).emitWithAck("message", { room, text: "hello" });
await until("y hearing x through Redis", () => y.heard.includes(hello.id));
console.log("ready");
await until('"down" on stdin', () => commands.includes("down"), 30_000);

const sent = [];
const refused = [];
for (let i = 0; i < 20; i++) {
  const ack = await x.s.timeout(5000).emitWithAck("message", { room, text: `down ${i}` }).catch((e) => ({ ok: false, error: String(e) }));
  if (ack.ok) sent.push(ack.id);
  else refused.push(ack.error);
  await new Promise((r) => setTimeout(r, 50));
}
const end = Date.now() + 5000;
const heardOf = () => y.heard.filter((id) => sent.includes(id));
while (heardOf().length < sent.length && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
const heard = heardOf();
console.log(JSON.stringify({ sent: sent.length, refused, heard: heard.length, in_order: JSON.stringify(heard) === JSON.stringify(sent), instances: [x.instance, y.instance] }));
process.exit(0);

// Long-polling against a cluster on one shared port, with no sticky balancer: COUNT guests, half
// polling only and half with socket.io-client's defaults (polling, then the upgrade to websocket),
// join ROOM and each send ROUNDS messages a little apart, so that every client makes many
// requests, each on a new connection. Every guest must get every message once, and no client may
// lose its session ("Session ID unknown" ends it: reconnection is off). Prints one JSON line with
// the instances that served the guests and how many upgraded; exits 1 with a reason on any failure.
//
// usage: node polling.mjs URL COUNT ROOM [ROUNDS]
import { io } from "socket.io-client";
import { deadline, fail, until } from "./common.mjs";

const [url, countArg, room, roundsArg] = process.argv.slice(2);
const count = Number(countArg ?? 6);
const rounds = Number(roundsArg ?? 3);
deadline(25);
const ask = (s, event, data) => s.timeout(8000).emitWithAck(event, data).catch((e) => fail(`${event}: ${e}`));

let finished = false;
const clients = await Promise.all(
  Array.from({ length: count }, (_, i) => {
    const transports = i % 2 === 0 ? ["polling"] : ["polling", "websocket"];
    const socket = io(url, { transports, reconnection: false, timeout: 8000 });
    const client = { socket, received: [], name: `guest-${i}` };
    socket.on("message", (m) => client.received.push(m));
    socket.on("disconnect", (reason) => finished || fail(`${client.name} (${transports}) lost its session: ${reason}`));
    return new Promise((resolve) => {
      socket.on("connect_error", (e) => fail(`${client.name}: connect_error: ${e.message}`));
      socket.on("connect", () => resolve(client));
    });
  }),
);

for (const c of clients) {
  const reply = await ask(c.socket, "guest:join", { name: c.name });
  if (!reply.ok) fail(`guest:join: ${JSON.stringify(reply)}`);
  c.instance = reply.instance;
  const joined = await ask(c.socket, "room:join", { room });
  if (!joined.ok) fail(`room:join: ${JSON.stringify(joined)}`);
}

const sent = [];
for (let round = 0; round < rounds; round++) {
  await Promise.all(
    clients.map(async (c) => {
      const ack = await ask(c.socket, "message", { room, text: `${c.name} #${round}` });
      if (!ack.ok) fail(`message refused: ${JSON.stringify(ack)}`);
      sent.push(ack.id);
    }),
  );
  await new Promise((r) => setTimeout(r, 150));
}

await until("every guest has every message", () => clients.every((c) => c.received.length >= sent.length), 10_000);
await new Promise((r) => setTimeout(r, 200));
for (const c of clients) {
  for (const id of sent) {
    const copies = c.received.filter((m) => m.id === id).length;
    if (copies !== 1) fail(`${c.name} got ${id} ${copies} times`);
  }
}
const upgraded = clients.filter((c) => c.socket.io.engine.transport.name === "websocket").length;
const pollingOnlyUpgraded = clients.filter((c, i) => i % 2 === 0 && c.socket.io.engine.transport.name !== "polling");
if (pollingOnlyUpgraded.length) fail("a polling-only client is not polling");
finished = true;
for (const c of clients) c.socket.disconnect();
const instances = [...new Set(clients.map((c) => c.instance))].sort();
console.log(JSON.stringify({ ok: true, instances, upgraded, messages: sent.length }));
process.exit(0);

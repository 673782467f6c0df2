// A guest joins ROOM and prints, as one JSON line, the ids of the messages the server recovered for
// it (`room:join`'s `missed`), oldest first. Exits 1 with a reason on any failure.
//
// usage: node recover.mjs URL ROOM
import { io } from "socket.io-client";

const [url, room] = process.argv.slice(2);
const deadline = setTimeout(() => fail("timed out after 10 s"), 10_000);

function fail(reason) {
  console.log(JSON.stringify({ ok: false, reason }));
  process.exit(1);
}

const socket = io(url, { transports: ["websocket"], reconnection: false, timeout: 5000, auth: { name: "recoverer" } });
socket.on("connect_error", (e) => fail(`connect_error: ${e.message}`));
await new Promise((resolve) => socket.on("connect", resolve));
const reply = await socket.timeout(5000).emitWithAck("room:join", { room }).catch((e) => fail(`room:join: ${e}`));
if (!reply.ok) fail(`room:join refused: ${JSON.stringify(reply)}`);
console.log(JSON.stringify({ ok: true, missed: (reply.missed ?? []).map((m) => m.id) }));
clearTimeout(deadline);
socket.disconnect();
process.exit(0);

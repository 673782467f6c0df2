// A returning guest's very first event, sent the moment the client is connected, is answered.
// socket.io tells a client it is connected before the server's connect handler has run; whatever
// the server awaited there before its event handlers were in place (the session's restore asks
// the cluster who is in each room) let such an event through to no handler: no answer, ever.
// Joins ROOMS rooms as a guest, then reconnects TIMES times with its token, each time sending a
// message in the 'connect' handler itself. Prints one JSON line; exits 1 on any failure.
//
// usage: node first-event.mjs URL ROOMS TIMES
import { io } from "socket.io-client";
import { deadline, fail } from "./common.mjs";

const [url, rooms, times] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])];
deadline(28);
const first = io(url, { transports: ["websocket"], reconnection: false });
// Every room change sends a new session: its token carries the rooms.
let token = null;
first.on("session", (s) => (token = s.token));
await new Promise((r) => first.on("connect", r));
const joined = await first.timeout(5000).emitWithAck("guest:join", { name: "early" }).catch((e) => fail(`guest:join: ${e}`));
if (!joined.ok) fail(`guest:join: ${joined.error}`);
for (let i = 0; i < rooms; i++) {
  const reply = await first.timeout(5000).emitWithAck("room:join", { room: `early-${i}` });
  if (!reply.ok) fail(`room:join: ${reply.error}`);
}
if (!token) fail("no session token");
first.disconnect();

let answered = 0;
const misses = [];
for (let i = 0; i < times; i++) {
  const socket = io(url, { transports: ["websocket"], reconnection: false, auth: { token }, forceNew: true });
  const reply = await new Promise((resolve) => {
    socket.on("connect", () => {
      socket.timeout(4000).emitWithAck("message", { room: "early-0", text: `first ${i}` }).then(resolve, (e) => resolve({ ok: false, error: String(e) }));
    });
    socket.on("connect_error", (e) => resolve({ ok: false, error: `connect_error: ${e.message}` }));
  });
  if (reply.ok) answered++;
  else misses.push(reply.error);
  socket.disconnect();
}
if (answered !== times) fail(`${times - answered} of ${times} first messages unanswered: ${JSON.stringify(misses.slice(0, 3))}`);
console.log(JSON.stringify({ ok: true, answered }));
process.exit(0);

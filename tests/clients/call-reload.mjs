// A call that rings through a reload, with the real socket.io-client v4: ann calls bob, then
// `chatctl reload` replaces the worker the call started on before its ring timeout; both must
// still be told `call:end {reason: "no answer"}` (by a worker that took the call in from the
// snapshot, since its own worker is gone). Prints one JSON line; exits 1 with a reason on failure.
//
// usage: node call-reload.mjs URL CHATCTL_BINARY  (CHATCTL_HOME and the cwd name the deployment)
import { io } from "socket.io-client";
import { deadline, fail, until } from "./common.mjs";
import { execFile } from "node:child_process";
import { promisify } from "node:util";

const [url, chatctl] = process.argv.slice(2);
deadline(45);

function guest(name) {
  const socket = io(url, { transports: ["websocket"], reconnectionDelay: 200, reconnectionDelayMax: 500, auth: {} });
  const g = { name, socket, ended: [] };
  socket.on("session", (s) => (socket.auth = { token: s.token }));
  socket.on("call:end", (e) => g.ended.push(e));
  return g;
}

const [ann, bob] = [guest("ann"), guest("bob")];
await until("both connected", () => ann.socket.connected && bob.socket.connected);
for (const g of [ann, bob]) {
  const join = await g.socket.timeout(5000).emitWithAck("guest:join", { name: g.name });
  if (!join.ok) fail(`guest:join: ${join.error}`);
  g.id = join.guest.id;
}
const invite = await ann.socket.timeout(5000).emitWithAck("call:invite", { to: [bob.id], media: "audio" });
if (!invite.ok) fail(`call:invite: ${invite.error}`);
await promisify(execFile)(chatctl, ["reload"], { env: process.env }).catch((e) => fail(`reload: ${e.stderr}`));
const begun = Date.now();
await until(
  "both told the unanswered call ended",
  () => [ann, bob].every((g) => g.ended.some((e) => e.call === invite.call && e.reason === "no answer")),
  30_000,
);
console.log(JSON.stringify({ ok: true, call: invite.call, ended_after_reload_ms: Date.now() - begun }));
for (const g of [ann, bob]) g.socket.disconnect();
process.exit(0);

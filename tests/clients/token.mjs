// A guest's session token: connects, joins as NAME, prints the token the server signed.
// usage: node token.mjs URL NAME
import { io } from "socket.io-client";
import { deadline, fail } from "./common.mjs";

const [url, name] = process.argv.slice(2);
deadline(10);
const socket = io(url, { transports: ["websocket"], reconnection: false });
socket.on("connect_error", (e) => fail(`connect_error: ${e.message}`));
await new Promise((r) => socket.on("connect", r));
const reply = await socket.timeout(5000).emitWithAck("guest:join", { name }).catch((e) => fail(`guest:join: ${e}`));
if (!reply.ok) fail(`guest:join: ${reply.error}`);
console.log(reply.token);
process.exit(0);

// Names a client must not get through, and TURN credentials that must be renewed. Prints one JSON
// line: which of the bad requests were accepted, and the TURN usernames the client was sent (the
// worker runs with TURN_TTL=2s), and whether the public statistics name the room it is in.
// usage: node small-holes.mjs URL
import { io } from "socket.io-client";
import { deadline, fail, until } from "./common.mjs";

const [url] = process.argv.slice(2);
deadline(20);
const ask = (s, event, data) => s.timeout(5000).emitWithAck(event, data).catch((e) => fail(`${event}: ${e}`));

const s = io(url, { transports: ["websocket"], reconnection: false });
const usernames = [];
s.on("ice:servers", (c) => usernames.push(c.iceServers.find((x) => x.username)?.username));
await new Promise((r) => s.on("connect", r));
const join = await ask(s, "guest:join", { name: "ann" });
if (!join.ok) fail(`guest:join: ${join.error}`);

const accepted = {};
accepted.rtl_override_room = (await ask(s, "room:join", { room: "\u202Enimda" })).ok;
accepted.control_character_room = (await ask(s, "room:join", { room: "a\u0007b" })).ok;
accepted.zero_width_room = (await ask(s, "room:join", { room: "lob\u200Bby" })).ok;
accepted.bidi_name = (await ask(io(url, { transports: ["websocket"] }).connect(), "guest:join", { name: "\u202Eeve" })).ok;
accepted.message_to_internal_room = (await ask(s, "message", { room: `@guest:${join.guest.id}`, text: "hi" })).ok;
if (!(await ask(s, "room:join", { room: "secret-room" })).ok) fail("room:join secret-room");
accepted.room_names_in_public_stats = (await (await fetch(`${url}/api/socket/stats`)).text()).includes("secret-room");

// Past half the credentials' life, the next session brings new ones.
await until("the first credentials", () => usernames.length >= 1);
await new Promise((r) => setTimeout(r, 1500));
if (!(await ask(s, "room:join", { room: "later" })).ok) fail("room:join later");
await new Promise((r) => setTimeout(r, 200));

console.log(JSON.stringify({ accepted, turn_usernames: usernames }));
process.exit(0);

// Two socket.io-client guests of the plain Express app (tests/apps/express-chat.js) on two different
// instances of a cluster (told apart by the pid the app answers with), in one room: x's message
// reaches y through the app's Redis adapter. Prints one JSON line; exits 1 with a reason.
// usage: node node-app-chat.mjs URL
import { io } from "socket.io-client";
import { deadline, fail, until } from "./common.mjs";

const [url] = process.argv.slice(2);
deadline(20);

async function guest(notPid) {
  for (let i = 0; i < 40; i++) {
    const s = io(url, { transports: ["websocket"], reconnection: false, forceNew: true });
    await new Promise((resolve) => {
      s.on("connect", resolve);
      s.on("connect_error", (e) => fail(`connect_error: ${e.message}`));
    });
    const joined = await s.timeout(5000).emitWithAck("join", "lobby").catch((e) => fail(`join: ${e}`));
    if (joined.pid !== notPid) {
      const heard = [];
      s.on("message", (m) => heard.push(m));
      return { s, pid: joined.pid, heard };
    }
    s.disconnect();
  }
  fail("could not place two guests on two instances");
}

const x = await guest(undefined);
const y = await guest(x.pid);
// The adapter subscribes asynchronously: say it until it is heard.
for (let i = 0; i < 50 && y.heard.length === 0; i++) {
  await x.s.timeout(5000).emitWithAck("message", { room: "lobby", text: `hello ${i}` }).catch((e) => fail(`message: ${e}`));
  await new Promise((r) => setTimeout(r, 100));
}
await until("y hearing x", () => y.heard.length > 0);
console.log(JSON.stringify({ ok: true, pids: [x.pid, y.pid], heard: y.heard[0] }));
process.exit(0);

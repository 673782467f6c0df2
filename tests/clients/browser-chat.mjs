// Two people in a real browser (headless Chromium through puppeteer-core, the system's browser, no
// download), on the web client the worker serves at `/`, on two different instances of a cluster:
// they enter, join a room, talk both ways, see each other arrive and type, send a direct message,
// share a file (the other downloads the very bytes), and make a video call (Chromium's fake camera
// and microphone): both connections reach "connected" and each side decodes the other's video and
// receives its audio. Screenshots at desktop and phone width, and of the call, are written to OUTDIR. Then it prints "ready" and waits
// for "reloaded" on stdin (the test runs `chatctl reload`): both pages must have shown
// "reconnecting", come back as the same guests, and the next message must reach the other.
// Prints one JSON line; exits 1 with a reason on any failure.
//
// usage: node browser-chat.mjs URL OUTDIR CHROMIUM
import { createHash, randomBytes } from "node:crypto";
import { unlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import puppeteer from "puppeteer-core";
import { createInterface } from "node:readline";
import { deadline, fail, until } from "./common.mjs";

const [url, outdir, chromium] = process.argv.slice(2);
deadline(90);
const commands = [];
createInterface({ input: process.stdin }).on("line", (l) => commands.push(l.trim()));

const browser = await puppeteer.launch({
  executablePath: chromium,
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--disable-gpu",
    // A camera and a microphone that need no device and no permission prompt; WebRTC host
    // candidates with real loopback addresses (not mDNS names, which nothing here resolves).
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--autoplay-policy=no-user-gesture-required",
  ],
});
// A failure exits at once (common.mjs), and the test stops the script with SIGTERM: the browser
// (a process group of its own) must not outlive it either way.
process.on("exit", () => browser.process()?.kill("SIGKILL"));
process.on("SIGTERM", () => process.exit(1));
const wait = (page, what, fn, ...args) =>
  page.waitForFunction(fn, { timeout: 15000 }, ...args).catch((e) => fail(`${what}: ${e.message}`));

/// A person in a browser context of their own (their own storage), on an instance other than `not`.
async function person(name, not) {
  for (let i = 0; i < 30; i++) {
    const context = await browser.createBrowserContext();
    const page = await context.newPage();
    page.on("pageerror", (e) => fail(`${name}'s page: ${e.message}`));
    await page.goto(url, { waitUntil: "load" });
    await page.type("#name", name);
    await page.click("#welcome button");
    await wait(page, `${name} entered`, () => !!document.body.dataset.instance && !document.getElementById("app").hidden);
    const instance = await page.evaluate(() => document.body.dataset.instance);
    if (instance !== not) return { name, page, instance };
    await context.close();
  }
  fail(`could not place ${name} on an instance other than ${not}`);
}

async function say(who, text) {
  await who.page.type("#text", text);
  await who.page.keyboard.press("Enter");
}

const heard = async (who, text) => {
  const ok = await who.page
    .waitForFunction((t) => [...document.querySelectorAll("#messages li")].some((li) => li.textContent.includes(t)), { timeout: 15000 }, text)
    .then(() => true)
    .catch(() => false);
  if (!ok) {
    const seen = await who.page.evaluate(() => [...document.querySelectorAll("#messages li")].map((li) => li.textContent));
    const others = await Promise.all([ann, bob].map((p) => p.page.evaluate(() => ({ current: window.chat.current, rooms: [...window.chat.rooms.keys()], connected: window.chat.socket.connected, last: [...window.chat.rooms.get("lobby")?.messages ?? []].slice(-3) }))));
    fail(`${who.name} did not hear "${text}": saw ${JSON.stringify(seen.slice(-4))}; pages ${JSON.stringify(others)}`);
  }
};

let ann, bob;
ann = await person("ann");
bob = await person("bob", ann.instance);
for (const who of [ann, bob]) {
  await who.page.type("#room", "lobby");
  await who.page.keyboard.press("Enter");
  await wait(who.page, `${who.name} in the room`, () => document.getElementById("title").textContent === "# lobby");
}
await wait(ann.page, "ann seeing bob", () => document.getElementById("members").textContent.includes("bob"));
await say(ann, "hello from ann");
await heard(bob, "hello from ann");
await say(bob, "hi ann, bob here");
await heard(ann, "hi ann, bob here");
// Typing, seen by the other.
await bob.page.type("#text", "typing something");
await wait(ann.page, "ann seeing bob type", () => document.getElementById("typing").textContent.includes("bob is typing"));
await bob.page.evaluate(() => (document.getElementById("text").value = ""));
// A direct message: ann clicks bob.
await ann.page.evaluate(() => [...document.querySelectorAll("#members li")].find((li) => li.textContent === "bob").click());
await wait(ann.page, "ann in the direct conversation", () => document.getElementById("title").textContent === "Direct: bob");
await say(ann, "psst, bob");
await wait(bob.page, "bob receiving the direct message", () =>
  [...window.chat.rooms.entries()].some(([name, r]) => name.startsWith("@dm:") && r.messages.some((m) => m.text === "psst, bob")),
);
await ann.page.evaluate(() => document.querySelector('#rooms li[data-room="lobby"]').click());
await wait(ann.page, "ann back in the room", () => document.getElementById("title").textContent === "# lobby");

// A file: ann shares one, bob downloads the very bytes.
const bytes = randomBytes(300_000);
const shared = join(tmpdir(), `chat-test-${process.pid}.bin`);
writeFileSync(shared, bytes);
const sent = createHash("sha256").update(bytes).digest("hex");
const input = await ann.page.$("#file");
await input.uploadFile(shared);
await wait(bob.page, "bob seeing the file", () => !!document.querySelector("#messages a.file"));
const got = await bob.page.evaluate(async () => {
  const url = document.querySelector("#messages a.file").getAttribute("href");
  const body = await (await fetch(url)).arrayBuffer();
  const hash = await crypto.subtle.digest("SHA-256", body);
  return [...new Uint8Array(hash)].map((b) => b.toString(16).padStart(2, "0")).join("");
});
unlinkSync(shared);
if (got !== sent) fail(`bob downloaded other bytes: ${got} != ${sent}`);

// A video call: ann calls bob from their direct conversation, bob accepts.
await ann.page.evaluate(() => document.querySelector('#rooms li[data-room^="@dm:"]').click());
await wait(ann.page, "ann in the direct conversation again", () => !document.getElementById("call-video").hidden);
await ann.page.click("#call-video");
await wait(bob.page, "bob's phone ringing", () => !document.getElementById("incoming").hidden);
await bob.page.click("#accept");
const connected = () => [...window.chat.call.peers.values()].some((p) => p.pc.connectionState === "connected");
for (const who of [ann, bob]) await wait(who.page, `${who.name}'s call connected`, connected);
// What each side receives: decoded video frames and audio packets, from WebRTC's own statistics.
const callStats = () =>
  Promise.all(
    [...window.chat.call.peers.values()].map(async (p) => {
      const seen = { frames: 0, audio: 0 };
      (await p.pc.getStats()).forEach((s) => {
        if (s.type === "inbound-rtp" && s.kind === "video") seen.frames += s.framesDecoded || 0;
        if (s.type === "inbound-rtp" && s.kind === "audio") seen.audio += s.packetsReceived || 0;
      });
      return seen;
    }),
  ).then((all) => all[0]);
const media = {};
for (const who of [ann, bob]) {
  // (Given as source: a function handed over would be a closure the page cannot see.)
  await wait(who.page, `${who.name} decoding the other's video`, `(${callStats})().then((s) => s && s.frames > 5 && s.audio > 5)`);
  media[who.name] = await who.page.evaluate(`(${callStats})()`);
}
await ann.page.setViewport({ width: 1100, height: 700 });
await ann.page.screenshot({ path: `${outdir}/web-client-call.png` });
await ann.page.click("#hangup");
await wait(bob.page, "bob's call over", () => document.getElementById("call").hidden);
await ann.page.evaluate(() => document.querySelector('#rooms li[data-room="lobby"]').click());
await wait(ann.page, "ann back in the room after the call", () => document.getElementById("title").textContent === "# lobby");

// What a person sees, at desktop and phone width.
await ann.page.setViewport({ width: 1100, height: 700 });
await ann.page.screenshot({ path: `${outdir}/web-client-desktop.png` });
// (isMobile would reload the page: the width is what the layout follows.)
await bob.page.setViewport({ width: 390, height: 780 });
await bob.page.screenshot({ path: `${outdir}/web-client-phone.png` });

const ids = {};
for (const who of [ann, bob]) ids[who.name] = await who.page.evaluate(() => window.chat.me.id);
console.log("ready");
await until('"reloaded" on stdin', () => commands.includes("reloaded"), 60_000);
for (const who of [ann, bob]) {
  await wait(who.page, `${who.name} reconnected`, () => document.body.dataset.sawReconnecting === "yes" && document.body.dataset.connected === "yes");
}
const same = [];
for (const who of [ann, bob]) same.push((await who.page.evaluate(() => window.chat.me.id)) === ids[who.name]);
await say(ann, "after the reload");
await heard(bob, "after the reload");
console.log(JSON.stringify({ ok: true, instances: [ann.instance, bob.instance], same_guests: same, call: media }));
await browser.close();
process.exit(0);

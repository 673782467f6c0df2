// A program whose version is what its build produced (built/version.txt, read at start), served on
// /health: the development-mode test changes src/version.txt and watches the version served; the
// deploy tests commit it with a build script and deploy each version. On SIGTERM it lingers
// linger.txt milliseconds, if there is such a file, before it exits.
const fs = require("fs");
const version = fs.readFileSync("built/version.txt", "utf8").trim();
// A release that breaks half-way through a reload: its instance 1 exits at once (the deploy tests).
if (fs.existsSync("fail-on-instance-1") && process.env.CHATCTL_INSTANCE === "1") process.exit(1);
require("http")
  .createServer((req, res) => {
    const body = JSON.stringify({ status: "ok", version, pid: process.pid });
    res.writeHead(req.url === "/health" ? 200 : 404, {
      "content-type": "application/json",
      "content-length": Buffer.byteLength(body),
    });
    res.end(body);
  })
  .listen(process.env.PORT);
process.on("SIGTERM", () => {
  const linger = fs.existsSync("linger.txt") ? Number(fs.readFileSync("linger.txt", "utf8")) : 0;
  setTimeout(() => process.exit(0), linger);
});

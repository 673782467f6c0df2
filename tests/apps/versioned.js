// A program whose version is what its build produced (built/version.txt, read at start), served on
// /health: the development-mode test changes src/version.txt and watches the version served.
const fs = require("fs");
const version = fs.readFileSync("built/version.txt", "utf8").trim();
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

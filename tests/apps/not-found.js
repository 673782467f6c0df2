// A Node program with no routes at all: every request is answered 404. Started on its own
// (`chatctl start not-found.js -i 2 --port P`), it must still come online: it answers.
require("http")
  .createServer((req, res) => {
    res.writeHead(404, { "content-type": "text/plain" });
    res.end(`not found (pid ${process.pid})\n`);
  })
  .listen(process.env.PORT);

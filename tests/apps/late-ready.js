// A Node program that serves at once but says it is ready only later, PM2's way
// (`process.send('ready')`, for `wait_ready`): it writes the file READY_MARK just before saying so.
const fs = require("fs");
require("http")
  .createServer((req, res) => {
    res.writeHead(200, { "content-length": 2 });
    res.end("ok");
  })
  .listen(process.env.PORT, () => {
    setTimeout(() => {
      fs.writeFileSync(process.env.READY_MARK, String(process.pid));
      process.send("ready");
    }, 1500);
  });

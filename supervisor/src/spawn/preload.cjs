// chatctl's preload for Node programs (loaded with `--require` through NODE_OPTIONS; `node_preload =
// false` turns it off). It changes exactly two things, and only in the process that first listens
// on the app's port:
//
// 1. `listen` on the app's port (`CHATCTL_PORT`: `server.listen(PORT)`, `listen({port})`, with or
//    without a host, whatever the framework: http, Express, Koa, Fastify, Socket.IO's server) listens
//    on the socket chatctl passed as fd 3 (`LISTEN_FDS`) instead of binding the port, which chatctl
//    holds: the app runs unmodified in cluster mode, and a restart or a reload refuses no connection.
//    A listen on any other port, path or handle is left alone.
// 2. In cluster mode, the same server also answers on the private admin socket chatctl passed
//    (`LISTEN_FDNAMES` "admin"), through the program's own request handler: the supervisor probes
//    each instance's `/health` there although all of them share one port.
//
// 3. That server drains on SIGTERM (or SIGINT) the way chatctl's own worker does, instead of Node's default
//    of dying at once: it stops accepting (the shared socket's queue goes to the other instances),
//    answers every request from then on with `Connection: close` (a kept-alive client learns to
//    reconnect from its next answer rather than finding its connection closed as it sends), closes
//    the connections still idle after 500 ms, and exits once every connection is done, or at four
//    fifths of `kill_timeout`. A SIGTERM handler of the program's own still runs, and may exit
//    earlier; at that deadline the program exits in any case.
//    A second listen on the port (Fastify listens on each address `localhost` resolves to) fails
//    with EADDRINUSE instead of binding a private socket beside chatctl's.
//
// Once it has taken the socket it removes LISTEN_FDS and LISTEN_FDNAMES from `process.env`, so the
// program's own child processes (which inherit NODE_OPTIONS, and so this preload) bind what they
// listen on themselves. A process that never listens on the port (npm running `npm start`) changes
// nothing.
"use strict";

(function chatctlPreload() {
  const env = process.env;
  const count = Number(env.LISTEN_FDS || 0);
  const port = Number(env.CHATCTL_PORT || 0);
  if (!(count > 0) || !(port > 0)) return;
  const names = (env.LISTEN_FDNAMES || "").split(":");
  const fdNamed = (name, fallback) => {
    const at = names.indexOf(name);
    return at >= 0 && at < count ? 3 + at : fallback;
  };
  const httpFd = fdNamed("http", 3);
  const adminFd = fdNamed("admin", null);
  const net = require("net");
  const listen = net.Server.prototype.listen;
  let taken = false;

  // The port a listen call asks for, or null when it asks for something else.
  function portOf(args) {
    const first = args[0];
    if (typeof first === "number" || (typeof first === "string" && /^\d+$/.test(first))) return Number(first);
    if (first && typeof first === "object" && first.port !== undefined && first.fd === undefined && first.path === undefined) {
      return Number(first.port);
    }
    return null;
  }

  net.Server.prototype.listen = function chatctlListen(...args) {
    if (portOf(args) !== port) return listen.apply(this, args);
    if (taken) {
      // A second listen on the port (Fastify binds every address `localhost` resolves to) would
      // bind a private socket beside chatctl's: it fails as a bind of a taken port does.
      const error = Object.assign(new Error(`listen EADDRINUSE: address already in use :${port}`), {
        code: "EADDRINUSE",
        syscall: "listen",
        port,
      });
      process.nextTick(() => this.emit("error", error));
      return this;
    }
    taken = true;
    delete env.LISTEN_FDS;
    delete env.LISTEN_FDNAMES;
    const callback = typeof args[args.length - 1] === "function" ? args[args.length - 1] : undefined;
    // Requests are handed to the program's handlers when they come, so handlers added after
    // listen are served too.
    if (adminFd !== null && typeof this.emit === "function") serveAdmin(this);
    if (typeof this.closeIdleConnections === "function") drainOnSigterm(this);
    return callback ? listen.call(this, { fd: httpFd }, callback) : listen.call(this, { fd: httpFd });
  };

  function drainOnSigterm(server) {
    const deadline = Number(env.CHATCTL_KILL_TIMEOUT_MS || 5000) * 0.8;
    let draining = false;
    const drain = (signal) => {
      if (draining) return;
      draining = true;
      // A handler of the program's own (listeners left) may exit earlier; at the deadline this
      // one does in any case (a library's listener, signal-exit's say, must not keep it alive).
      const exit = process.listenerCount(signal) === 0 ? () => process.exit(0) : () => {};
      server.prependListener("request", (req, res) => {
        if (!res.headersSent) res.setHeader("Connection", "close");
      });
      // `close` would also close the idle kept-alive connections at once (Node 19+), racing
      // clients about to send on them: they get the grace first.
      const closeIdle = server.closeIdleConnections;
      server.closeIdleConnections = () => {};
      server.close(exit);
      setTimeout(() => {
        server.closeIdleConnections = closeIdle;
        closeIdle.call(server);
      }, Math.min(500, deadline / 2)).unref();
      setTimeout(() => process.exit(0), deadline).unref();
    };
    // `kill_signal` may be SIGINT too.
    process.once("SIGTERM", () => drain("SIGTERM"));
    process.once("SIGINT", () => drain("SIGINT"));
  }

  function serveAdmin(server) {
    const http = require("http");
    const admin = http.createServer((req, res) => server.emit("request", req, res));
    admin.keepAliveTimeout = 1000;
    listen.call(admin, { fd: adminFd });
    // It must not keep the program alive, and it closes with the program's server.
    admin.unref();
    server.once("close", () => admin.close());
  }
})();

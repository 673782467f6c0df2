// A plain Fastify server as its users write it: it listens on process.env.PORT on Fastify's default
// host (localhost, which Fastify binds on every address it resolves to) and knows nothing of chatctl.
const fastify = require("fastify")();

fastify.get("/health", async () => ({ status: "ok", pid: process.pid }));
fastify.get("/api/hello", async () => ({ hello: "world", pid: process.pid }));

fastify.listen({ port: Number(process.env.PORT) || 3000 }, (err) => {
  if (err) {
    console.error(err);
    process.exit(1);
  }
});

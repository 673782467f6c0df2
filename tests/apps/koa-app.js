// A plain Koa server as its users write it: app.listen(process.env.PORT || 3000), nothing of chatctl.
const Koa = require("koa");

const app = new Koa();
app.use((ctx) => {
  ctx.body = ctx.path === "/health" ? { status: "ok", pid: process.pid } : { hello: "world", pid: process.pid };
});
app.listen(process.env.PORT || 3000);

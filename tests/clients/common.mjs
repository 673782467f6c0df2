// What every client script shares: how it fails (one JSON line, exit 1) and how it waits (bounded).

export function fail(reason) {
  console.log(JSON.stringify({ ok: false, reason }));
  process.exit(1);
}

/** Fails the run after `seconds`, whatever it is doing. */
export function deadline(seconds) {
  setTimeout(() => fail(`timed out after ${seconds} s`), seconds * 1000).unref();
}

/** Polls `check` until it is true; fails the run after `ms`. */
export async function until(what, check, ms = 5000) {
  const end = Date.now() + ms;
  while (!check()) {
    // `what` may be a function, so that a failure says what was seen by then.
    if (Date.now() > end) fail(`waited ${ms} ms for: ${typeof what === "function" ? what() : what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

// Opens a page in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core: no browser download) and reports what happens there, for the
// Python tests.
//
//   node browser.js '{"url": "http://127.0.0.1:PORT/", "userDataDir": "/tmp/fresh", "chromium": "/usr/bin/chromium"}'
//
// stdout: one JSON object per line: what the page passes to window.__report(...),
// its console lines ({"event": "console"}), page errors, failed requests, and
// {"event": "loaded"}.  stdin: {"cmd": "exit"} closes the browser; {"cmd": "eval", "id": N, "code": "..."}
// evaluates code in the page and reports {"event": "eval", "id": N, "result": ...} (or "error");
// {"frames": true} also reports each WebSocket frame the page receives ({"event": "frame"}).
// {"cmd": "screenshot", "path": P} saves a PNG of the page; {"cmd": "goto", "url": U} and {"cmd": "back"} navigate.
"use strict";

const readline = require("readline");
const { chromium } = require("playwright-core");

const args = JSON.parse(process.argv[2]);

function report(event, fields) {
  process.stdout.write(JSON.stringify(Object.assign({}, fields || {}, { event: event })) + "\n");
}

async function main() {
  const context = await chromium.launchPersistentContext(args.userDataDir, {
    executablePath: args.chromium || "/usr/bin/chromium",
    headless: true,
    // Playwright turns the back/forward cache off for determinism; {"bfcache": true} keeps it, as browsers have it
    ignoreDefaultArgs: args.bfcache ? ["--disable-back-forward-cache"] : [],
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  let closing = false;
  async function exit(code) {
    if (closing) return;
    closing = true;
    try {
      await context.close();
    } finally {
      process.exit(code);
    }
  }
  const page = context.pages()[0] || (await context.newPage());
  readline.createInterface({ input: process.stdin }).on("line", function (line) {
    const command = JSON.parse(line);
    if (command.cmd === "exit") exit(0);
    if (command.cmd === "goto" || command.cmd === "back") {
      // a navigation as the user makes it: the page may go into the back/forward cache (or be unloaded)
      (command.cmd === "goto" ? page.goto(command.url) : page.goBack({ waitUntil: "commit" })).then(
        function () { report("navigated", { cmd: command.cmd, url: page.url() }); },
        function (error) { report("navigated", { cmd: command.cmd, error: String(error) }); }
      );
    }
    if (command.cmd === "screenshot") {
      page.screenshot({ path: command.path, fullPage: true }).then(
        function () { report("screenshot", { path: command.path }); },
        function (error) { report("screenshot", { error: String(error) }); }
      );
    }
    if (command.cmd === "eval") {
      // run an expression in the page (awaited if it is a promise); its JSON value or error comes back
      page.evaluate(command.code).then(
        function (result) { report("eval", { id: command.id, result: result === undefined ? null : result }); },
        function (error) { report("eval", { id: command.id, error: String((error && error.message) || error) }); }
      );
    }
  });

  await page.exposeFunction("__report", function (fields) {
    report(fields.event, fields);
  });
  page.on("console", function (message) {
    report("console", { text: message.text() });
  });
  page.on("pageerror", function (error) {
    report("pageerror", { message: String(error) });
  });
  if (args.frames) {
    // {"frames": true}: what each WebSocket of the page receives, as the wire carries it
    page.on("websocket", function (socket) {
      socket.on("framereceived", function (frame) { report("frame", { url: socket.url(), data: String(frame.payload) }); });
    });
  }
  page.on("requestfailed", function (request) {
    const failure = request.failure();
    report("requestfailed", { url: request.url(), error: failure ? failure.errorText : null });
  });
  await page.goto(args.url);
  report("loaded", { version: context.browser() ? context.browser().version() : null });
}

main().catch(function (error) {
  report("fatal", { message: String((error && error.stack) || error) });
  process.exit(1);
});

// The browser library's cost in a page: JS heap per channel subscription, in headless Chromium.
// Needs a daemon with "demo": true (its demo application permits demo* channels) and tests/js's node modules:
//
//   .venv/bin/twistd -n --pidfile= redmessenger -c CONFIG_WITH_DEMO_TRUE &   # e.g. ws_port 8099
//   node bench/browser_memory.js http://127.0.0.1:8099 1000
//
// Prints {"subscriptions", "seconds", "heap_before", "heap_after", "bytes_per_subscription"} (heap after gc()).
// "seconds" is the demo application's pace (it polls every 0.1 s), not the daemon's.
"use strict";

const path = require("path");
const { chromium } = require(path.join(__dirname, "..", "tests", "js", "node_modules", "playwright-core"));

(async () => {
  const base = process.argv[2] || "http://127.0.0.1:8099";
  const count = Number(process.argv[3] || 1000);
  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: ["--no-sandbox", "--enable-precise-memory-info", "--js-flags=--expose-gc"],
  });
  const page = await browser.newPage();
  await page.goto(base + "/demo?uid=memory");
  await page.waitForFunction(() => window.demo && window.demo.rm.state === "connected");
  const heap = () => page.evaluate(() => { gc(); gc(); return performance.memory.usedJSHeapSize; });
  const before = await heap();
  const started = Date.now();
  await page.evaluate(async (n) => {
    const asked = [];
    for (let i = 0; i < n; i++) asked.push(window.demo.rm.subscribe("demo.m" + i, () => {}));
    window.kept = await Promise.all(asked);
  }, count);
  const seconds = (Date.now() - started) / 1000;
  const after = await heap();
  console.log(JSON.stringify({ subscriptions: count, seconds, heap_before: before, heap_after: after,
                               bytes_per_subscription: Math.round((after - before) / count) }));
  await browser.close();
})();

// Headless Chromium driven by playwright-core, one JSON command per stdin line, one JSON answer per
// stdout line (tests/system/test_dashboard.py is the client). The browser is Debian's chromium
// (CHROMIUM, default /usr/bin/chromium): playwright-core never downloads one.
//
//   {"op": "open", "url": U}                      -> {"ok": true}
//   {"op": "wait", "js": EXPR, "timeout_ms": N}   -> {"ok": true, "elapsed_ms": T} once EXPR is truthy
//   {"op": "eval", "js": EXPR}                    -> {"ok": true, "value": V}
//   {"op": "screenshot", "path": P}               -> {"ok": true}
//   {"op": "problems"}                            -> {"ok": true, "value": [console errors, page errors, failed requests]}
//   {"op": "close"}                               -> {"ok": true}, then exit
// A failed command answers {"ok": false, "error": message}.
"use strict";

const readline = require("node:readline");
const { chromium } = require(process.env.PLAYWRIGHT_CORE || "playwright-core");

const problems = [];
let browser = null;
let page = null;

async function handle(cmd) {
  switch (cmd.op) {
    case "open": {
      browser = await chromium.launch({
        executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
        headless: true,
        args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
      });
      page = await browser.newPage({ viewport: { width: 1500, height: 900 } });
      page.on("console", (m) => { if (m.type() === "error" || m.type() === "warning") problems.push("console " + m.type() + ": " + m.text()); });
      page.on("pageerror", (e) => problems.push("page error: " + e.message));
      page.on("requestfailed", (r) => problems.push("request failed: " + r.url() + " " + (r.failure() || {}).errorText));
      await page.goto(cmd.url, { waitUntil: "load" });
      return {};
    }
    case "wait": {
      // Polled from here with page.evaluate (the DevTools protocol): waitForFunction evaluates its
      // string inside the page, which the dashboard's CSP (no eval) rightly refuses.
      const started = Date.now();
      for (;;) {
        if (await page.evaluate(cmd.js)) return { elapsed_ms: Date.now() - started };
        if (Date.now() - started > cmd.timeout_ms) throw new Error("not true within " + cmd.timeout_ms + " ms: " + cmd.js);
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    }
    case "eval":
      return { value: await page.evaluate(cmd.js) };
    case "screenshot":
      await page.screenshot({ path: cmd.path, fullPage: true });
      return {};
    case "problems":
      return { value: problems };
    case "close":
      if (browser) await browser.close();
      return {};
    default:
      throw new Error("unknown op " + JSON.stringify(cmd.op));
  }
}

const lines = readline.createInterface({ input: process.stdin });
let queue = Promise.resolve();
lines.on("line", (line) => {
  queue = queue.then(async () => {
    const cmd = JSON.parse(line);
    let answer;
    try {
      answer = { ok: true, ...(await handle(cmd)) };
    } catch (err) {
      answer = { ok: false, error: String(err && err.message ? err.message : err) };
    }
    process.stdout.write(JSON.stringify(answer) + "\n");
    if (cmd.op === "close") process.exit(0);
  });
});
lines.on("close", () => queue.then(async () => { if (browser) await browser.close(); process.exit(0); }));
process.stdout.write(JSON.stringify({ ok: true, ready: true }) + "\n");

// Loads the live page in headless Chromium and checks what it draws; run by tests/e2e/test_page.py.
// argv: <page url> <symbol> <champion version>. Prints "READY <last bar ts>" once the chart is drawn,
// then waits for "STORED <ts>" on stdin and for the page to show that bar; exits non-zero on any failure.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import chromium from "@sparticuz/chromium";
import { chromium as playwright } from "playwright-core";

const [url, symbol, champion] = process.argv.slice(2);
const ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const profile = mkdtempSync(join(tmpdir(), "page-check-"));
const errors = [];
const fail = (message) => { throw new Error(message); };
const context = await playwright.launchPersistentContext(profile, {
  executablePath: await chromium.executablePath(), args: ARGS, headless: true, locale: "en-US",
});
try {
  const page = context.pages()[0] ?? (await context.newPage());
  page.on("console", (m) => { if (m.type() === "error") errors.push(`console: ${m.text()}`); });
  page.on("pageerror", (e) => errors.push(`page error: ${e.message}`));
  page.on("requestfailed", (r) => errors.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));
  const response = await page.goto(url, { waitUntil: "load", timeout: 15000 });
  if (!response.ok()) fail(`${url} answered ${response.status()}`);
  if (!new URL(page.url()).pathname.endsWith("/live")) fail(`${url} did not lead to the live page: ${page.url()}`);
  const chart = `.chart[data-symbol="${symbol}"]`;
  await page
    .waitForSelector(`${chart}[data-forecasts]:not([data-forecasts="0"])`, { state: "attached", timeout: 15000 })
    .catch(async (e) => fail(`${e.message}\nstatus: ${await page.textContent("#status")}\n${errors.join("\n")}`));
  const drawn = await page.$eval(chart, (box) => {
    const canvas = box.querySelector("canvas");
    const ctx = canvas.getContext("2d");
    const { data } = ctx.getImageData(0, 0, canvas.width, canvas.height);
    let blue = 0, dark = 0;
    for (let i = 0; i < data.length; i += 4) {
      const [r, g, b, a] = [data[i], data[i + 1], data[i + 2], data[i + 3]];
      if (a > 0 && b > r + 15) blue++; // forecast line and band
      if (a > 200 && r < 80 && g < 80 && b < 80) dark++; // closes and axes
    }
    return { ...box.dataset, width: canvas.width, height: canvas.height, blue, dark };
  });
  if (!(drawn.width > 100 && drawn.height > 100)) fail(`canvas is ${drawn.width}x${drawn.height}`);
  if (!(Number(drawn.band) > 0)) fail(`no interval band: ${JSON.stringify(drawn)}`);
  if (!(Number(drawn.closes) > 0)) fail(`no closes: ${JSON.stringify(drawn)}`);
  if (!(Number(drawn.changes) > 0)) fail(`no version change marked: ${JSON.stringify(drawn)}`);
  if (!(drawn.blue > 500 && drawn.dark > 100)) fail(`the canvas shows too little: ${JSON.stringify(drawn)}`);
  const shown = await page.$eval("#champion", (el) => el.dataset.version);
  if (shown !== champion) fail(`champion shown is ${shown}, not ${champion}`);
  const row = await page.$(`#versions tr.champion[data-version="${champion}"]`);
  if (row === null) fail(`the versions table does not mark v${champion} as champion`);
  const rowText = await row.innerText();
  const deadletters = await page.$eval("#deadletters", (el) => el.textContent);
  const lag = await page.$eval("#lag", (el) => el.textContent);
  console.log(`READY ${drawn.lastTs}`);
  const { value } = await lines.next();
  const stored = (value ?? "").split(" ")[1];
  await page
    .waitForSelector(`${chart}[data-last-ts="${stored}"]`, { state: "attached", timeout: 15000 })
    .catch(async (e) => fail(`${e.message}\nstatus: ${await page.textContent("#status")}\n${errors.join("\n")}`));
  const updates = await page.evaluate(() => document.body.dataset.updates);
  if (errors.length) fail(errors.join("\n"));
  console.log(JSON.stringify({ ok: true, drawn, champion: rowText, deadletters, lag, updates }));
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(0);

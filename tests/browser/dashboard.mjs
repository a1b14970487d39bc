#!/usr/bin/env node
// Checks the Panopticon dashboard in headless Chromium.
//
// Usage: node tests/browser/dashboard.mjs http://127.0.0.1:PORT POD_NAME [POD_NAME...]
//
// Opens the page and waits until the latest-sample table lists every POD_NAME, until
// `#status-updated` has changed twice (the live view refreshes), then checks the backpressure
// badge, the rows-written figure and that Chart.js drew the CPU and memory charts. Any console
// error or warning, uncaught page error, failed request or HTTP status >= 400 fails the run.
//
// Environment:
//   CHROMIUM               the browser binary (default /usr/bin/chromium)
//   DASHBOARD_SCREENSHOT   if set, a full-page PNG is written there
//   DASHBOARD_TIMEOUT_MS   how long to wait for the pods (default 30000)
//   DASHBOARD_TOKEN        the service's HTTP_AUTH_TOKEN: the page must first be refused
//                          without credentials (401, Basic challenge), then is opened with the
//                          token as the HTTP Basic password, as a browser's prompt sends it

import { chromium } from 'playwright-core';

const USAGE = 'usage: node tests/browser/dashboard.mjs http://127.0.0.1:PORT POD_NAME [POD_NAME...]';
const BACKPRESSURE_STATES = ['ok', 'throttled', 'paused'];
const POD_TIMEOUT_MS = Number(process.env.DASHBOARD_TIMEOUT_MS) || 30_000;
const REFRESH_TIMEOUT_MS = 15_000;
const TOKEN = process.env.DASHBOARD_TOKEN || '';

function fail(message) {
  // Playwright's messages carry terminal colour codes; logs read better without them.
  console.log(`dashboard: FAIL: ${String(message).replace(/\x1b\[[0-9;]*m/g, '')}`);
  process.exit(1);
}

const [baseUrl, ...pods] = process.argv.slice(2);
if (!baseUrl || pods.length === 0) {
  console.log(USAGE);
  process.exit(2);
}
let pageUrl;
try {
  pageUrl = new URL('/', baseUrl).href;
} catch {
  console.log(`dashboard: not a URL: ${baseUrl}\n${USAGE}`);
  process.exit(2);
}

const problems = [];
let collecting = true;
function problem(kind, text) {
  if (collecting) problems.push(`${kind}: ${text}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
});

async function screenshot(page) {
  if (page && process.env.DASHBOARD_SCREENSHOT) {
    await page.screenshot({ path: process.env.DASHBOARD_SCREENSHOT, fullPage: true });
  }
}

let summary;
let page;
try {
  if (TOKEN) {
    // Without credentials the service refuses the page and asks for Basic credentials (the
    // page's own request: headless Chromium has no prompt to show, it fails the navigation).
    const anonymous = await browser.newContext();
    const refused = await anonymous.request.get(pageUrl, { timeout: 30_000 });
    const challenge = refused.headers()['www-authenticate'] || '';
    await anonymous.close();
    if (refused.status() !== 401 || !challenge.includes('Basic realm="panopticon"')) {
      throw new Error(
        `without credentials GET ${pageUrl} answered ${refused.status()} (WWW-Authenticate: ${challenge}), not 401 with a Basic challenge`,
      );
    }
  }
  const context = await browser.newContext({
    viewport: { width: 1440, height: 900 },
    ...(TOKEN ? { httpCredentials: { username: 'panopticon', password: TOKEN } } : {}),
  });
  page = await context.newPage();

  page.on('console', (msg) => {
    const type = msg.type();
    if (type === 'error' || type === 'warning') {
      const loc = msg.location();
      const where = loc && loc.url ? ` (${loc.url}:${loc.lineNumber})` : '';
      problem(`console ${type}`, `${msg.text()}${where}`);
    }
  });
  page.on('pageerror', (err) => problem('page error', err && err.stack ? err.stack : String(err)));
  page.on('requestfailed', (req) => {
    const failure = req.failure();
    problem('request failed', `${req.method()} ${req.url()}: ${failure ? failure.errorText : 'unknown error'}`);
  });
  page.on('response', (res) => {
    if (res.status() >= 400) problem('HTTP error', `${res.request().method()} ${res.url()}: ${res.status()}`);
  });

  const response = await page.goto(pageUrl, { waitUntil: 'load', timeout: 30_000 });
  if (!response || !response.ok()) {
    throw new Error(`GET ${pageUrl} answered ${response ? response.status() : 'nothing'}`);
  }

  // 1. Every pod named on the command line is in the latest-sample table.
  try {
    await page.waitForFunction(
      (names) => {
        const cells = document.querySelectorAll('#latest-table tbody tr td.pod');
        const seen = new Set(Array.from(cells, (td) => td.textContent.trim()));
        return names.every((n) => seen.has(n));
      },
      pods,
      { timeout: POD_TIMEOUT_MS, polling: 250 },
    );
  } catch {
    const seen = await page
      .$$eval('#latest-table tbody tr td.pod', (cells) => cells.map((td) => td.textContent.trim()))
      .catch(() => []);
    const missing = pods.filter((p) => !seen.includes(p));
    throw new Error(
      `after ${POD_TIMEOUT_MS} ms the latest table lacks ${missing.join(', ')} (it shows: ${seen.join(', ') || 'no pods'})`,
    );
  }

  // 2. The live view refreshes: #status-updated changes at least twice.
  const statusText = () => page.$eval('#status-updated', (el) => el.textContent.trim());
  const stamps = [await statusText()];
  for (let i = 0; i < 2; i++) {
    const previous = stamps[stamps.length - 1];
    try {
      await page.waitForFunction(
        (prev) => {
          const el = document.querySelector('#status-updated');
          return el !== null && el.textContent.trim() !== prev;
        },
        previous,
        { timeout: REFRESH_TIMEOUT_MS, polling: 100 },
      );
    } catch {
      throw new Error(`#status-updated stayed "${previous}" for ${REFRESH_TIMEOUT_MS} ms (seen: ${stamps.join(' -> ')})`);
    }
    stamps.push(await statusText());
  }

  // 3. The pipeline figures.
  const backpressure = await page.$eval('#backpressure-state', (el) => el.textContent.trim());
  if (!BACKPRESSURE_STATES.includes(backpressure)) {
    throw new Error(`#backpressure-state is "${backpressure}", not one of ${BACKPRESSURE_STATES.join('/')}`);
  }
  const rowsWritten = await page.$eval('#writer-rows-written', (el) => el.textContent.trim());
  if (!/^\d+$/.test(rowsWritten)) {
    throw new Error(`#writer-rows-written is "${rowsWritten}", not a number`);
  }

  const actors = await page.$$eval('.actor', (cards) =>
    cards.map((card) => ({
      actor: card.dataset.actor,
      title: card.querySelector('h3').textContent.trim(),
      records: card.querySelector('[data-field="records"]').textContent.trim(),
    })),
  );
  const expectedActors = [['consumer', 'Consumer'], ['validator', 'Validator'], ['writer', 'Writer']];
  if (
    actors.length !== expectedActors.length ||
    actors.some((a, i) => a.actor !== expectedActors[i][0] || a.title !== expectedActors[i][1] || !/^\d[\d,.\u00a0\u202f ]*$/.test(a.records))
  ) {
    throw new Error(`actor cards: ${JSON.stringify(actors)}`);
  }

  // 4. Chart.js drew both charts, each with at least one series.
  const charts = await page.evaluate(() => {
    const out = {};
    for (const id of ['cpu-chart', 'memory-chart']) {
      const canvas = document.getElementById(id);
      if (!(canvas instanceof HTMLCanvasElement)) {
        out[id] = { error: 'no <canvas> with this id' };
        continue;
      }
      if (typeof window.Chart !== 'function' || typeof window.Chart.getChart !== 'function') {
        out[id] = { error: 'Chart.js is not loaded' };
        continue;
      }
      const chart = window.Chart.getChart(canvas);
      if (!chart) {
        out[id] = { error: 'no chart on the canvas' };
        continue;
      }
      const datasets = chart.data.datasets || [];
      out[id] = {
        datasets: datasets.length,
        points: datasets.reduce((n, ds) => n + (Array.isArray(ds.data) ? ds.data.length : 0), 0),
        width: canvas.width,
        height: canvas.height,
      };
    }
    return out;
  });
  for (const [id, c] of Object.entries(charts)) {
    if (c.error) throw new Error(`#${id}: ${c.error}`);
    if (c.datasets < 1) throw new Error(`#${id}: the chart has no dataset`);
    if (!(c.width > 0 && c.height > 0)) throw new Error(`#${id}: the canvas has no size`);
  }

  // 5. No error banner is showing.
  const banner = await page.$eval('#error-banner', (el) => (el.hidden ? '' : el.textContent.trim())).catch(() => '');
  if (banner) problem('error banner', banner.replace(/\s+/g, ' '));

  await screenshot(page);

  summary =
    `${pods.length} pod(s) in the latest table, status refreshed ${stamps.join(' -> ')}, ` +
    `backpressure=${backpressure}, rows_written=${rowsWritten}, ` +
    `charts cpu=${charts['cpu-chart'].datasets} memory=${charts['memory-chart'].datasets} series`;
} catch (err) {
  collecting = false;
  // A picture of the page as it was helps to tell why.
  await screenshot(page).catch(() => {});
  await browser.close().catch(() => {});
  const extra = problems.length ? `\n  also seen:\n    ${problems.join('\n    ')}` : '';
  fail(`${err && err.message ? err.message : err}${extra}`);
}

collecting = false;
await browser.close().catch(() => {});

if (problems.length) {
  fail(`${problems.length} problem(s) in the page:\n    ${problems.join('\n    ')}\n  (${summary})`);
}
console.log(`dashboard: OK: ${summary}; no console errors, page errors or failed requests`);
process.exit(0);

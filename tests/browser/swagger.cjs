// The gateway's Swagger UI in a real browser (run by scripts/browser-test.sh).
//
// Opens GATEWAY_URL/docs/ in Debian's chromium (headless, through playwright-core), checks
// that the page lists every operation of the API, then uses the UI as a person would: "Try it
// out" on PUT /put/{key}, Execute, and a 200 in the UI's response table; the same for
// GET /get/{key}, whose body must show the value just written. Saves screenshots: the whole
// page (SCREENSHOT) and the GET operation with its response (SCREENSHOT's name + -try-it-out).
//
// Environment: GATEWAY_URL (required), SCREENSHOT (default swagger.png), CHROMIUM
// (default /usr/bin/chromium), USER_DATA_DIR (a fresh, empty directory; required).

'use strict';

const { chromium } = require('playwright-core');

const gateway = process.env.GATEWAY_URL;
const screenshot = process.env.SCREENSHOT || 'swagger.png';
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const userDataDir = process.env.USER_DATA_DIR;
if (!gateway || !userDataDir) {
  console.error('GATEWAY_URL and USER_DATA_DIR are required');
  process.exit(2);
}

// Every operation the gateway documents (gateway/src/openapi.rs).
const OPERATIONS = [
  'PUT /put/{key}',
  'POST /put/{key}',
  'GET /get/{key}',
  'GET /versions/{key}',
  'GET /servers',
  'GET /cache/stats',
  'GET /db/stats',
  'GET /health',
  'GET /ready',
  'GET /metrics',
];
const KEY = `swagger-${Date.now()}`;
const VALUE = `written from the Swagger UI at ${new Date().toISOString()}`;

function log(message) {
  console.log(`  ${message}`);
}

// The opblock of one operation, e.g. ('put', '/put/{key}').
function operation(page, method, path) {
  return page
    .locator(`.opblock.opblock-${method}`)
    .filter({ has: page.locator('.opblock-summary-path', { hasText: new RegExp(`^${path.replace(/[{}]/g, '\\$&')}$`) }) })
    .first();
}

// Opens an operation, presses "Try it out", lets `fill` set its inputs, presses Execute and
// returns the live response's status code and body as the UI shows them.
async function tryItOut(page, method, path, fill) {
  const op = operation(page, method, path);
  await op.locator('.opblock-summary').click();
  await op.getByRole('button', { name: 'Try it out' }).click();
  await fill(op);
  await op.getByRole('button', { name: 'Execute' }).click();
  const status = op.locator('.live-responses-table .response .response-col_status').first();
  await status.waitFor({ timeout: 15000 });
  const code = (await status.innerText()).trim();
  const body = await op.locator('.live-responses-table .response-col_description pre').first().innerText();
  log(`${method.toUpperCase()} ${path} -> ${code}: ${body.replace(/\s+/g, ' ').slice(0, 160)}`);
  return { op, code, body };
}

async function main() {
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    // The flags this machine's chromium needs (no sandbox as root, no background traffic
    // towards a closed network); --headless is added by Playwright.
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    viewport: { width: 1280, height: 1000 },
  });
  const failures = [];
  const check = (ok, what) => {
    log(`${ok ? 'ok   ' : 'FAIL '} ${what}`);
    if (!ok) failures.push(what);
  };
  try {
    const page = context.pages()[0] || (await context.newPage());
    page.setDefaultTimeout(20000);
    const url = `${gateway}/docs/`;
    const response = await page.goto(url, { waitUntil: 'load' });
    check(response && response.status() === 200, `GET ${url} answers 200 (${response && response.status()})`);
    await page.locator('.opblock').first().waitFor();
    check((await page.locator('.info .title').innerText()).includes('kvstore gateway'), 'the page is the kvstore gateway API');

    const listed = await page.$$eval('.opblock', (blocks) =>
      blocks.map((b) => {
        const method = b.querySelector('.opblock-summary-method')?.textContent.trim();
        const path = b.querySelector('.opblock-summary-path')?.textContent.trim();
        return `${method} ${path}`;
      }),
    );
    for (const op of OPERATIONS) {
      check(listed.includes(op), `the page lists ${op}`);
    }

    const put = await tryItOut(page, 'put', '/put/{key}', async (op) => {
      await op.locator('input[placeholder="key"]').fill(KEY);
      await op.locator('textarea.body-param__text').fill(JSON.stringify({ value: VALUE }));
    });
    check(put.code === '200', `Try it out: PUT /put/${KEY} shows 200 in the UI (${put.code})`);
    check(/"version":\s*1/.test(put.body), 'the PUT response shows version 1');

    const get = await tryItOut(page, 'get', '/get/{key}', async (op) => {
      await op.locator('input[placeholder="key"]').fill(KEY);
    });
    check(get.code === '200', `Try it out: GET /get/${KEY} shows 200 in the UI (${get.code})`);
    check(get.body.includes(VALUE), 'the GET response shows the value written through the UI');

    // The whole page (every operation, both tries), and the GET operation alone, readable.
    await page.screenshot({ path: screenshot, fullPage: true });
    const detail = screenshot.replace(/\.png$/, '') + '-try-it-out.png';
    await get.op.screenshot({ path: detail });
    log(`screenshots: ${screenshot}, ${detail}`);
  } finally {
    await context.close();
  }
  if (failures.length) {
    console.error(`swagger: ${failures.length} check(s) failed`);
    process.exit(1);
  }
  console.log('swagger: every check passed');
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});

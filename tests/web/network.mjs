// The network page against a testnet (tests/webapp.rs): three workers cover layers 0..30 and
// the finalized height advances; then, when the test has killed the 20..30 worker (it prints
// "covered" and waits for a line on stdin), that range turns red and a chat says no worker
// serves those layers. Prints one JSON line.

import { createInterface } from 'node:readline';
import { BASE, OUT, check, launch } from './common.mjs';

const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const browser = await launch();
const result = {};
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(`${BASE}/#/network`, { waitUntil: 'load' });
  await page.waitForFunction(() => document.querySelectorAll('#models .model table.workers tbody tr').length === 3
    && document.querySelectorAll('#models .layers .gap').length === 0, null, { timeout: 120000 });
  const fin1 = Number(await page.textContent('#finalized'));
  await page.waitForFunction((f) => Number(document.getElementById('finalized').textContent) > f, fin1, { timeout: 30000 });
  result.validators = await page.$$eval('#validators tbody tr', (r) => r.length);
  result.workers = await page.$$eval('#models table.workers tbody tr td:nth-child(3)', (c) => c.map((x) => x.textContent).sort());
  check(JSON.stringify(result.workers) === JSON.stringify(['0..10', '10..20', '20..30']), `three workers cover 0..30: ${result.workers}`);
  await page.screenshot({ path: `${OUT}/network-testnet.png`, fullPage: true });
  console.log('covered');
  await lines.next();
  const killed = Date.now();
  await page.waitForFunction(() => {
    const gap = document.querySelector('#models .gaps');
    return gap && gap.textContent.includes('20..30');
  }, null, { timeout: 150000 });
  result.redAfterSecs = (Date.now() - killed) / 1000;
  result.gaps = await page.$$eval('#models .layers .gap', (g) => g.map((x) => Number(x.dataset.layer)));
  check(result.gaps.length === 10 && result.gaps[0] === 20, `layers 20..30 are red: ${result.gaps}`);
  await page.screenshot({ path: `${OUT}/network-testnet-gap.png`, fullPage: true });

  // A chat now gets a clear message: no worker serves the missing layers.
  await page.click('nav a[data-page="chat"]');
  await page.waitForSelector('#model option', { state: 'attached' });
  await page.fill('#prompt', 'What is the capital of France?');
  await page.press('#prompt', 'Enter');
  await page.waitForSelector('#chat-error:not([hidden])', { timeout: 120000 });
  result.chatError = await page.textContent('#chat-error');
  check(result.chatError.startsWith('No worker serves this model right now') && result.chatError.includes('20..30'),
    `the chat says why it cannot answer: ${result.chatError}`);
  await page.screenshot({ path: `${OUT}/chat-no-worker.png`, fullPage: true });
  check(errors.length === 0, `no errors in the page: ${errors.join('; ')}`);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
process.exit(0);

// Drives the node's web app in a real browser (Debian's Chromium through playwright-core) and
// prints what it saw as one JSON line; any check that fails throws (exit status 1). Run by
// tests/webapp.rs, which starts the node and checks the node's side (counters over JSON-RPC).
//
// Environment, beyond common.mjs's: ADDRESS (an address with a balance), SECRET (a funded dev
// key's URI), SIGNER (its address) and RECIPIENT (an address to send to).

import { BASE, OUT, check, launch } from './common.mjs';

const browser = await launch();
const result = {};
try {
  const context = await browser.newContext({ viewport: { width: 1200, height: 800 } });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('dialog', (d) => { errors.push(`dialog: ${d.message()}`); d.dismiss(); });

  // Chat: the capital of France streams in.
  const navigated = Date.now();
  await page.goto(`${BASE}/`, { waitUntil: 'load' });
  const loaded = Date.now();
  await page.waitForSelector('#model option', { state: 'attached' });
  // The page's weight: the document and everything it loaded (the API's answers aside).
  result.pageBytes = await page.evaluate(() => [...performance.getEntriesByType('navigation'), ...performance.getEntriesByType('resource')]
    .filter((e) => !e.name.includes('/v1/'))
    .reduce((sum, e) => sum + (e.encodedBodySize || 0), 0));
  await page.fill('#prompt', 'What is the capital of France?');
  const sent = Date.now();
  await page.press('#prompt', 'Enter');
  await page.waitForFunction(() => {
    const m = [...document.querySelectorAll('.msg.assistant .body')];
    return m.length && m[m.length - 1].textContent.length > 0;
  }, null, { timeout: 120000 });
  result.firstTokenAfterSendSecs = (Date.now() - sent) / 1000;
  result.firstTokenAfterLoadSecs = (Date.now() - loaded) / 1000;
  result.loadSecs = (loaded - navigated) / 1000;
  await page.waitForSelector('#send:not([disabled])', { timeout: 120000 });
  const answer = await page.textContent('.msg.assistant:last-of-type .body');
  check(answer.includes('Paris'), `the answer names Paris: ${answer}`);
  const meta = await page.textContent('.msg.assistant:last-of-type .meta');
  check(/tokens\/s/.test(meta) && /job #\d+/.test(meta) && /route: /.test(meta) && /cost /.test(meta),
    `the answer's speed, route, job and cost are shown: ${meta}`);
  result.answer = answer;
  result.meta = meta;
  await page.screenshot({ path: `${OUT}/chat.png`, fullPage: true });

  // Stop mid-answer: a second conversation, a long answer stopped after its first words.
  await page.click('#new-chat');
  await page.fill('#max-tokens', '400');
  await page.fill('#prompt', 'Write a long story about a robot who learns to paint.');
  await page.click('#send');
  await page.waitForFunction(() => {
    const m = [...document.querySelectorAll('.msg.assistant .body')];
    return m.length && m[m.length - 1].textContent.length > 20;
  }, null, { timeout: 120000 });
  await page.click('#stop');
  await page.waitForSelector('#send:not([disabled])');
  const stoppedMeta = await page.textContent('.msg.assistant:last-of-type .meta');
  check(stoppedMeta.includes('stopped'), `the stopped answer says so: ${stoppedMeta}`);
  result.stoppedLength = (await page.textContent('.msg.assistant:last-of-type .body')).length;

  // Both conversations survive a reload.
  await page.reload({ waitUntil: 'load' });
  const titles = await page.$$eval('#conversation-list button.open', (b) => b.map((x) => x.textContent));
  check(titles.length === 2, `two conversations after a reload: ${JSON.stringify(titles)}`);
  await page.click('#conversation-list li:nth-child(2) button.open');
  const kept = await page.textContent('#messages');
  check(kept.includes('Paris'), 'the first conversation kept its answer');

  // Model output is untrusted: markup in it is shown as text.
  await page.evaluate(() => {
    const hostile = '<script>window.__xss = 1</script> and <img src=x onerror="window.__xss = 2"> **bold**\n```html\n<b onmouseover="window.__xss = 3">code</b>\n```';
    const list = JSON.parse(localStorage.getItem('bitorch.conversations'));
    list.unshift({ id: 'hostile', title: 'hostile', messages: [{ role: 'user', content: '<i>hi</i>' }, { role: 'assistant', content: hostile }] });
    localStorage.setItem('bitorch.conversations', JSON.stringify(list));
    localStorage.setItem('bitorch.current', 'hostile');
  });
  await page.reload({ waitUntil: 'load' });
  await page.waitForSelector('.msg.assistant');
  const xss = await page.evaluate(() => ({
    ran: window.__xss ?? null,
    scripts: document.querySelectorAll('#messages script, #messages img, #messages b, #messages i').length,
    strong: document.querySelectorAll('#messages strong').length,
    text: document.querySelector('#messages').textContent,
  }));
  await page.hover('#messages pre');
  check(xss.ran === null, `no script of the output ran (${xss.ran})`);
  check(xss.scripts === 0, 'no element of the output was made');
  check(xss.text.includes('<script>window.__xss = 1</script>') && xss.text.includes('<img src=x onerror='), 'the markup is shown as text');
  check(xss.strong === 1, 'markdown still renders');
  await page.screenshot({ path: `${OUT}/chat-untrusted-output.png`, fullPage: true });

  // Accessibility basics: every control has a label; the chat works from the keyboard alone.
  const unlabeled = await page.evaluate(() => [...document.querySelectorAll('input, select, textarea, button')]
    .filter((e) => !(e.labels?.length || e.getAttribute('aria-label') || e.textContent.trim()))
    .map((e) => e.id || e.outerHTML.slice(0, 60)));
  check(unlabeled.length === 0, `controls without a label: ${unlabeled}`);
  await page.click('#new-chat');
  await page.focus('body');
  let reached = false;
  for (let i = 0; i < 40 && !reached; i++) {
    await page.keyboard.press('Tab');
    reached = await page.evaluate(() => document.activeElement?.id === 'prompt');
  }
  check(reached, 'the message box is reached with Tab');
  await page.keyboard.type('List three prime numbers.');
  await page.keyboard.press('Enter');
  await page.waitForSelector('.msg.assistant .meta', { timeout: 120000 });
  await page.waitForSelector('#send:not([disabled])', { timeout: 120000 });
  result.keyboardAnswer = await page.textContent('.msg.assistant:last-of-type .body');
  check(result.keyboardAnswer.length > 0, 'a keyboard-sent question is answered');

  // Network: the chain advances, the validators are listed.
  await page.click('nav a[data-page="network"]');
  await page.waitForFunction(() => Number(document.getElementById('best').textContent) > 0);
  const best1 = Number(await page.textContent('#best'));
  await page.waitForFunction((b) => Number(document.getElementById('best').textContent) > b, best1, { timeout: 30000 });
  await page.waitForFunction(() => Number(document.getElementById('finalized').textContent) > 0);
  await page.waitForSelector('#validators tbody tr');
  await page.waitForSelector('#blocks tbody tr');
  result.validators = await page.$$eval('#validators tbody tr', (r) => r.length);
  result.models = await page.$$eval('#models .model', (m) => m.length);
  await page.screenshot({ path: `${OUT}/network.png`, fullPage: true });

  // Jobs: the chat's job is listed with its price; its page opens.
  await page.click('nav a[data-page="jobs"]');
  await page.waitForSelector('#jobs tbody tr a');
  result.jobs = await page.$$eval('#jobs tbody tr', (r) => r.length);
  await page.click('#jobs tbody tr a');
  await page.waitForSelector('#job-detail h3');
  result.jobDetail = await page.textContent('#job-detail h3');
  await page.screenshot({ path: `${OUT}/jobs.png`, fullPage: true });

  // Wallet: an address's balance.
  await page.click('nav a[data-page="wallet"]');
  await page.fill('#address', process.env.ADDRESS);
  await page.press('#address', 'Enter');
  await page.waitForSelector('#free');
  result.free = await page.textContent('#free');
  check(/BTR$/.test(result.free), `a balance in BTR: ${result.free}`);
  await page.fill('#address', 'not an address');
  await page.press('#address', 'Enter');
  await page.waitForSelector('#wallet-error:not([hidden])');
  result.badAddress = await page.textContent('#wallet-error');

  // Signing in the browser: a secret that is none is refused; a dev key signs a transfer and
  // an allowance, and makes an API key (the test then pays a request with it).
  await page.fill('#secret', 'not a secret at all');
  await page.press('#secret', 'Enter');
  await page.waitForSelector('#key-error:not([hidden])', { timeout: 30000 });
  result.badSecret = await page.textContent('#key-error');
  await page.fill('#secret', process.env.SECRET);
  await page.press('#secret', 'Enter');
  await page.waitForSelector('#signing:not([hidden])', { timeout: 30000 });
  result.signer = await page.textContent('#key-status');
  check(await page.inputValue('#secret') === '', 'the secret is not left in the form');
  await page.fill('#transfer-to', process.env.RECIPIENT);
  await page.fill('#transfer-amount', '1.5');
  await page.click('#transfer-form button[type=submit]');
  await page.waitForFunction(() => /in a block|not|fail|invalid/i.test(document.getElementById('transfer-status').textContent), null, { timeout: 90000 });
  result.transfer = await page.textContent('#transfer-status');
  check(result.transfer.includes('in a block'), `the transfer is in a block: ${result.transfer}`);
  await page.fill('#token-allowance', '50');
  await page.click('#token-form button[type=submit]');
  await page.waitForFunction(() => document.getElementById('token').value.startsWith('btr_')
    || /not|fail|invalid/i.test(document.getElementById('token-status').textContent), null, { timeout: 90000 });
  result.tokenStatus = await page.textContent('#token-status');
  result.token = await page.inputValue('#token');
  check(result.token.startsWith('btr_'), `an API key was made: ${result.tokenStatus}`);
  await page.screenshot({ path: `${OUT}/wallet.png`, fullPage: true });

  // The network page's recent blocks show the transactions just signed, by whom.
  await page.click('nav a[data-page="network"]');
  await page.waitForFunction((who) => [...document.querySelectorAll('#blocks td.txs li')]
    .some((li) => li.textContent.startsWith('Jobs.Approve by') && li.querySelector('span').title === who),
  process.env.SIGNER, { timeout: 30000 });
  result.blockTransactions = await page.$$eval('#blocks td.txs li', (l) => l.map((x) => x.textContent));

  check(errors.length === 0, `no errors in the page: ${errors.join('; ')}`);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));

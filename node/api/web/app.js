// Bitorch's web app: chat over the node's OpenAI-compatible API, the network and jobs over its
// JSON-RPC WebSocket, balances of an address. No framework, no build step, no external
// resources. Model output and chain data are untrusted: everything is put in the page as text
// (textContent, never innerHTML), and the page's Content-Security-Policy allows no inline script.

const $ = (id) => document.getElementById(id);

/** An element with attributes and children (strings become text nodes). */
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    e.append(typeof c === 'string' || typeof c === 'number' ? document.createTextNode(String(c)) : c);
  }
  return e;
}

function short(s, n = 8) {
  s = String(s ?? '');
  return s.length > 2 * n + 1 ? `${s.slice(0, n)}…${s.slice(-n)}` : s;
}

/** Plancks (10^-12 BTR) as a decimal string of BTR. */
function btr(plancks) {
  if (plancks === undefined || plancks === null) return '–';
  const v = BigInt(plancks);
  const whole = v / 1000000000000n;
  const frac = (v % 1000000000000n).toString().padStart(12, '0').replace(/0+$/, '');
  return frac ? `${whole}.${frac} BTR` : `${whole} BTR`;
}

// ---------------------------------------------------------------------------------------------
// Safe rendering of model output: a small subset of Markdown (fenced code, inline code, bold,
// italics, headings, lists, paragraphs) built from DOM nodes whose text is set as text.

function inline(text) {
  const out = [];
  const re = /(`[^`\n]+`|\*\*[^*\n]+\*\*|\*[^*\n]+\*)/g;
  let at = 0;
  for (const m of text.matchAll(re)) {
    if (m.index > at) out.push(text.slice(at, m.index));
    const t = m[0];
    if (t.startsWith('`')) out.push(el('code', {}, t.slice(1, -1)));
    else if (t.startsWith('**')) out.push(el('strong', {}, t.slice(2, -2)));
    else out.push(el('em', {}, t.slice(1, -1)));
    at = m.index + t.length;
  }
  if (at < text.length) out.push(text.slice(at));
  return out;
}

export function renderMarkdown(text) {
  const root = document.createDocumentFragment();
  const lines = String(text).split('\n');
  let para = [];
  let list = null;
  const flush = () => {
    if (para.length) root.append(el('p', {}, inline(para.join('\n'))));
    para = [];
    list = null;
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const fence = line.match(/^```\s*([\w+-]*)\s*$/);
    if (fence) {
      flush();
      const code = [];
      for (i++; i < lines.length && !/^```\s*$/.test(lines[i]); i++) code.push(lines[i]);
      root.append(el('pre', {}, el('code', { 'data-lang': fence[1] || null }, code.join('\n'))));
      continue;
    }
    const heading = line.match(/^(#{1,4})\s+(.*)$/);
    const item = line.match(/^\s*(?:[-*]|\d+[.)])\s+(.*)$/);
    if (heading) {
      flush();
      root.append(el(`h${heading[1].length + 2}`, {}, inline(heading[2])));
    } else if (item) {
      if (para.length) flush();
      if (!list) {
        list = el(/^\s*\d/.test(line) ? 'ol' : 'ul');
        root.append(list);
      }
      list.append(el('li', {}, inline(item[1])));
    } else if (line.trim() === '') {
      flush();
    } else {
      if (list) list = null;
      para.push(line);
    }
  }
  flush();
  return root;
}

// ---------------------------------------------------------------------------------------------
// JSON-RPC over the node's WebSocket.

class Rpc {
  constructor(url) {
    this.url = url;
    this.next = 1;
    this.pending = new Map();
    this.subs = new Map();
    this.onstate = () => {};
    this.connect();
  }

  connect() {
    this.ready = new Promise((resolve) => {
      const ws = new WebSocket(this.url);
      this.ws = ws;
      ws.onopen = () => { this.onstate(true); resolve(); };
      ws.onclose = () => {
        this.onstate(false);
        for (const [, p] of this.pending) p.reject(new Error('the node closed the connection'));
        this.pending.clear();
        setTimeout(() => this.connect(), 2000);
      };
      ws.onmessage = (ev) => {
        let msg;
        try { msg = JSON.parse(ev.data); } catch { return; }
        if (msg.id !== undefined && this.pending.has(msg.id)) {
          const p = this.pending.get(msg.id);
          this.pending.delete(msg.id);
          if (msg.error) p.reject(new Error(msg.error.message)); else p.resolve(msg.result);
        } else if (msg.params && this.subs.has(msg.params.subscription)) {
          this.subs.get(msg.params.subscription)(msg.params.result);
        }
      };
    });
  }

  async call(method, params = []) {
    await this.ready;
    return new Promise((resolve, reject) => {
      const id = this.next++;
      this.pending.set(id, { resolve, reject });
      this.ws.send(JSON.stringify({ jsonrpc: '2.0', id, method, params }));
    });
  }

  async subscribe(method, params, onItem) {
    const id = await this.call(method, params);
    this.subs.set(id, onItem);
    return id;
  }
}

let rpc = null;
let configured = null;
/** What the node tells the page (its JSON-RPC port, its gateway account), fetched once. */
function config() {
  configured ??= fetch('/app/config.json').then((r) => r.json());
  return configured;
}

async function getRpc() {
  if (rpc) return rpc;
  const { rpcPort } = await config();
  rpc = new Rpc(`ws://${location.hostname}:${rpcPort}`);
  rpc.onstate = (up) => { $('conn').textContent = up ? 'connected to the node' : 'reconnecting to the node…'; };
  return rpc;
}

// ---------------------------------------------------------------------------------------------
// Chat.

const STORE = 'bitorch.conversations';
const CURRENT = 'bitorch.current';

function loadConversations() {
  try {
    const v = JSON.parse(localStorage.getItem(STORE) || '[]');
    return Array.isArray(v) ? v.filter((c) => c && Array.isArray(c.messages)) : [];
  } catch {
    return [];
  }
}

const chat = {
  conversations: loadConversations(),
  current: localStorage.getItem(CURRENT),
  controller: null,
};

function save() {
  localStorage.setItem(STORE, JSON.stringify(chat.conversations));
  if (chat.current) localStorage.setItem(CURRENT, chat.current);
}

function conversation() {
  let c = chat.conversations.find((c) => c.id === chat.current);
  if (!c) {
    c = { id: `c${Date.now()}${Math.floor(Math.random() * 1000)}`, title: 'New conversation', messages: [] };
    chat.conversations.unshift(c);
    chat.current = c.id;
    save();
  }
  return c;
}

function renderConversations() {
  const list = $('conversation-list');
  list.replaceChildren(...chat.conversations.map((c) => el('li', { class: c.id === chat.current ? 'current' : null },
    el('button', { type: 'button', class: 'open', 'aria-current': c.id === chat.current ? 'true' : null,
      onclick: () => { if (!chat.controller) { chat.current = c.id; save(); renderChat(); } } }, c.title),
    el('button', { type: 'button', 'aria-label': `Delete ${c.title}`, title: 'Delete',
      onclick: () => {
        if (chat.controller) return;
        chat.conversations = chat.conversations.filter((x) => x.id !== c.id);
        if (chat.current === c.id) chat.current = chat.conversations[0]?.id ?? null;
        save();
        renderChat();
      } }, '×'))));
}

function metaText(meta) {
  if (!meta) return null;
  const parts = [];
  if (meta.stopped) parts.push('stopped');
  if (meta.tokens !== undefined) parts.push(`${meta.tokens} tokens`);
  if (meta.tokensPerSec) parts.push(`${meta.tokensPerSec.toFixed(1)} tokens/s`);
  if (meta.ttft !== undefined) parts.push(`first token ${meta.ttft.toFixed(2)} s`);
  const b = meta.bitorch;
  if (b) {
    if (b.route?.length) parts.push(`route: ${b.route.map((r) => `${short(r.worker, 5)} ${r.layers[0]}..${r.layers[1]}`).join(', ')}`);
    if (b.job !== null && b.job !== undefined) parts.push(`job #${b.job}`);
    if (b.cost !== undefined) parts.push(`cost ${btr(b.cost)}`);
  }
  return parts.join(' · ');
}

function messageNode(m, index, c) {
  const body = el('div', { class: 'body' });
  if (m.role === 'assistant') body.append(renderMarkdown(m.content)); else body.append(el('p', {}, m.content));
  const tools = el('div', { class: 'tools' });
  if (m.role === 'assistant') {
    tools.append(el('button', { type: 'button', onclick: () => navigator.clipboard?.writeText(m.content) }, 'Copy'));
    if (index === c.messages.length - 1) {
      tools.append(el('button', { type: 'button', onclick: () => regenerate() }, 'Regenerate'));
    }
  }
  const meta = metaText(m.meta);
  return el('div', { class: `msg ${m.role}`, 'data-role': m.role },
    el('div', { class: 'who' }, m.role === 'user' ? 'You' : 'Assistant'), body,
    meta ? el('div', { class: 'meta' }, meta) : null, tools);
}

function renderChat() {
  renderConversations();
  const c = chat.conversations.find((c) => c.id === chat.current);
  const box = $('messages');
  box.replaceChildren(...(c ? c.messages.map((m, i) => messageNode(m, i, c)) : []));
  box.scrollTop = box.scrollHeight;
}

function showChatError(text) {
  const e = $('chat-error');
  e.textContent = text || '';
  e.hidden = !text;
}

async function loadModels() {
  try {
    const r = await fetch('/v1/models');
    const v = await r.json();
    if (!r.ok) throw new Error(v?.error?.message || `HTTP ${r.status}`);
    const select = $('model');
    select.replaceChildren(...v.data.map((m) => el('option', { value: m.id }, m.id)));
    if (!v.data.length) showChatError('This node serves no model yet.');
  } catch (e) {
    showChatError(`Could not list the models: ${e.message}`);
  }
}

/** Why a request failed, in words a person can act on. */
function explain(status, body) {
  const msg = body?.error?.message || `HTTP ${status}`;
  if (status === 503) return `No worker serves this model right now: ${msg}`;
  if (status === 402) return `The allowance or balance does not cover this request: ${msg}`;
  if (status === 429) return `The node is busy: ${msg}`;
  return msg;
}

async function generate(c) {
  const messages = c.messages.map(({ role, content }) => ({ role, content }));
  const answer = { role: 'assistant', content: '', meta: {} };
  c.messages.push(answer);
  const box = $('messages');
  let node = messageNode(answer, c.messages.length - 1, c);
  box.append(node);
  const controller = new AbortController();
  chat.controller = controller;
  $('stop').disabled = false;
  $('send').disabled = true;
  showChatError('');
  const started = performance.now();
  let first = null;
  const redraw = () => {
    const fresh = messageNode(answer, c.messages.length - 1, c);
    node.replaceWith(fresh);
    node = fresh;
    box.scrollTop = box.scrollHeight;
  };
  try {
    const res = await fetch('/v1/chat/completions', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        model: $('model').value,
        messages,
        stream: true,
        stream_options: { include_usage: true },
        temperature: Number($('temperature').value),
        max_tokens: Number($('max-tokens').value),
      }),
      signal: controller.signal,
    });
    if (!res.ok) {
      const body = await res.json().catch(() => null);
      throw new Error(explain(res.status, body));
    }
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    let done = false;
    while (!done) {
      const { value, done: end } = await reader.read();
      if (end) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf('\n\n')) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split('\n')) {
          if (!line.startsWith('data:')) continue;
          const data = line.slice(5).trim();
          if (data === '[DONE]') { done = true; break; }
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(explain(0, chunk));
          const delta = chunk.choices?.[0]?.delta?.content;
          if (delta) {
            if (first === null) first = performance.now();
            answer.content += delta;
          }
          if (chunk.bitorch) answer.meta.bitorch = chunk.bitorch;
          if (chunk.usage) answer.meta.tokens = chunk.usage.completion_tokens;
        }
        redraw();
      }
    }
  } catch (e) {
    if (e.name === 'AbortError') answer.meta.stopped = true;
    else showChatError(e.message);
  } finally {
    const end = performance.now();
    if (first !== null) {
      answer.meta.ttft = (first - started) / 1000;
      const n = answer.meta.tokens;
      if (n > 1 && end > first) answer.meta.tokensPerSec = (n - 1) / ((end - first) / 1000);
    }
    if (!answer.content && !answer.meta.stopped) c.messages.pop();
    chat.controller = null;
    $('stop').disabled = true;
    $('send').disabled = false;
    save();
    renderChat();
  }
}

async function send(text) {
  const c = conversation();
  if (!c.messages.length) c.title = text.slice(0, 40);
  c.messages.push({ role: 'user', content: text });
  save();
  renderChat();
  await generate(c);
}

async function regenerate() {
  const c = conversation();
  if (chat.controller || c.messages[c.messages.length - 1]?.role !== 'assistant') return;
  c.messages.pop();
  save();
  renderChat();
  await generate(c);
}

function setUpChat() {
  $('composer').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const text = $('prompt').value.trim();
    if (!text || chat.controller) return;
    $('prompt').value = '';
    send(text);
  });
  $('prompt').addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey) {
      ev.preventDefault();
      $('composer').requestSubmit();
    }
  });
  $('stop').addEventListener('click', () => chat.controller?.abort());
  $('new-chat').addEventListener('click', () => {
    if (chat.controller) return;
    chat.current = null;
    conversation();
    renderChat();
    $('prompt').focus();
  });
  loadModels();
  renderChat();
}

// ---------------------------------------------------------------------------------------------
// Network.

const network = { started: false, blocks: [], timer: null };

function cell(text, attrs = {}) { return el('td', attrs, text); }

async function blockRow(header) {
  const number = parseInt(header.number, 16);
  let txs = null;
  let hash = '';
  try {
    hash = await rpc.call('chain_getBlockHash', [number]);
    txs = await rpc.call('bitorch_blockTransactions', [hash]);
  } catch { /* shown as unknown */ }
  return { number, hash, txs, author: header.author ?? '' };
}

function renderBlocks() {
  $('blocks').tBodies[0].replaceChildren(...network.blocks.map((b) => el('tr', {},
    cell(b.number), cell(short(b.hash, 10), { class: 'mono', title: b.hash }),
    el('td', { class: 'txs' }, b.txs === null ? '–' : b.txs.length === 0 ? 'none'
      : el('ul', {}, b.txs.map((t) => el('li', {}, `${t.call} by `, el('span', { class: 'mono', title: t.signer }, short(t.signer, 5)), ` (nonce ${t.nonce})`)))),
    cell(short(b.author, 6), { class: 'mono', title: b.author }))));
}

function layerMap(model, workers) {
  const n = model.layerCount;
  const cover = new Array(n).fill(0);
  for (const w of workers) for (let l = w.layerStart; l < w.layerEnd && l < n; l++) cover[l]++;
  const map = el('div', { class: 'layers', role: 'img',
    'aria-label': `layers covered: ${cover.filter((x) => x > 0).length} of ${n}` },
    cover.map((k, l) => el('span', { class: k ? 'covered' : 'gap', title: `layer ${l}: ${k} worker(s)`, 'data-layer': l }, String(l))));
  const gaps = [];
  for (let l = 0; l < n; l++) {
    if (!cover[l]) {
      const start = l;
      while (l < n && !cover[l]) l++;
      gaps.push(`${start}..${l}`);
    }
  }
  return { map, gaps };
}

async function refreshNetwork() {
  try {
    const [state, health, models] = await Promise.all([
      rpc.call('bitorch_consensusState'),
      rpc.call('system_health'),
      rpc.call('bitorch_models'),
    ]);
    $('round').textContent = state.round === null ? state.height : `${state.height} (round ${state.round})`;
    $('finalized').textContent = state.finalizedNumber;
    $('peers').textContent = health.peers;
    $('validators').tBodies[0].replaceChildren(...state.validators.map((v) => el('tr', {},
      cell(v.address, { class: 'mono' }), cell(v.votingPower))));
    const parts = [];
    for (const m of models) {
      let workers = [];
      let note = null;
      try {
        workers = await rpc.call('bitorch_workers', [m.id]);
      } catch (e) {
        note = e.message;
      }
      const { map, gaps } = layerMap(m, workers);
      // A node without networking (--dev) finds no workers: it serves the model itself.
      const alone = note !== null;
      parts.push(el('div', { class: 'model', 'data-model': m.id },
        el('h4', {}, `${m.name} `, el('span', { class: 'muted mono' }, short(m.id, 8)), ` · ${m.layerCount} layers`),
        alone ? null : map,
        alone ? null : gaps.length ? el('p', { class: 'bad gaps' }, `No worker serves layers ${gaps.join(', ')}`) : el('p', { class: 'good' }, 'Every layer is served'),
        alone ? el('p', { class: 'muted' }, `No workers to find: ${note}. This node serves the model itself.`) : null,
        workers.length ? el('table', { class: 'workers' },
          el('thead', {}, el('tr', {}, ['Worker', 'Peer', 'Layers', 'Tokens/s', 'Price per layer-token', 'Free sessions'].map((h) => el('th', { scope: 'col' }, h)))),
          el('tbody', {}, workers.map((w) => el('tr', {},
            cell(short(w.account, 6), { class: 'mono', title: w.account }),
            cell(short(w.peerId, 6), { class: 'mono', title: w.peerId }),
            cell(`${w.layerStart}..${w.layerEnd}`),
            cell(Number(w.tokensPerSec).toFixed(0)),
            cell(btr(w.price)),
            cell(`${w.free} of ${w.capacity}`))))) : null));
    }
    $('models').replaceChildren(...parts);
  } catch (e) {
    $('conn').textContent = `the node does not answer: ${e.message}`;
  }
}

async function startNetwork() {
  if (network.started) return;
  network.started = true;
  await getRpc();
  // The latest blocks first, then each new one as it comes.
  const best = await rpc.call('chain_getHeader', []);
  const top = parseInt(best.number, 16);
  for (let n = Math.max(1, top - 9); n <= top; n++) {
    const hash = await rpc.call('chain_getBlockHash', [n]);
    const header = await rpc.call('chain_getHeader', [hash]);
    if (header) network.blocks.unshift(await blockRow(header));
  }
  renderBlocks();
  await rpc.subscribe('chain_subscribeNewHeads', [], async (header) => {
    $('best').textContent = parseInt(header.number, 16);
    const row = await blockRow(header);
    network.blocks = [row, ...network.blocks.filter((b) => b.number !== row.number)].slice(0, 10);
    renderBlocks();
  });
  await rpc.subscribe('chain_subscribeFinalizedHeads', [], (header) => {
    $('finalized').textContent = parseInt(header.number, 16);
  });
  await refreshNetwork();
  network.timer = setInterval(refreshNetwork, 2000);
}

// ---------------------------------------------------------------------------------------------
// Jobs.

function statusText(s) {
  if (!s) return '–';
  const [k, v] = Object.entries(s)[0];
  if (k === 'settled') return `settled: paid ${btr(v.paid)}, refunded ${btr(v.refunded)}`;
  if (k === 'challenge') return `in challenge until block ${v.settleAt}`;
  if (k === 'stuck') return `stuck: ${v}`;
  return k;
}

function verdict(claim) {
  const a = claim.audit;
  if (!a) return 'not audited';
  if (a.outcome?.failed) return `audit failed: slashed ${btr(a.outcome.failed.slashed)}`;
  if (a.outcome === 'passed') return 'audit passed';
  if (a.outcome === 'inconclusive') return 'audit inconclusive';
  return 'audit open';
}

async function showJob(id) {
  const box = $('job-detail');
  if (id === null) { box.replaceChildren(); return; }
  try {
    const j = await rpc.call('bitorch_job', [Number(id)]);
    if (!j) { box.replaceChildren(el('p', { class: 'error' }, `There is no job ${id} (a job leaves the chain's state a day of blocks after it settled).`)); return; }
    box.replaceChildren(el('div', { class: 'card', id: `job-${j.id}` },
      el('h3', {}, `Job #${j.id}`),
      el('p', {}, `Client ${j.client}, model ${short(j.model, 8)}, ${j.layerCount} layers, up to ${j.maxTokens} tokens at ${btr(j.pricePerLayerToken)} per layer-token; escrow ${btr(j.escrow)}, claimed ${btr(j.claimed)}; opened at block ${j.openedAt}, deadline ${j.deadline}.`),
      el('p', {}, `Status: ${statusText(j.status)}`),
      el('table', {}, el('thead', {}, el('tr', {}, ['Worker', 'Layers', 'Positions', 'Paid', 'Audit'].map((h) => el('th', { scope: 'col' }, h)))),
        el('tbody', {}, j.claims.map((c) => el('tr', {}, cell(c.worker, { class: 'mono' }), cell(`${c.layerStart}..${c.layerEnd}`), cell(c.positions), cell(btr(c.paid)), cell(verdict(c))))))));
  } catch (e) {
    box.replaceChildren(el('p', { class: 'error' }, e.message));
  }
}

async function refreshJobs(detail) {
  await getRpc();
  try {
    const jobs = await rpc.call('bitorch_recentJobs', [50]);
    $('jobs').tBodies[0].replaceChildren(...jobs.map((j) => el('tr', {},
      el('td', {}, el('a', { href: `#/jobs/${j.id}` }, `#${j.id}`)),
      cell(short(j.client, 6), { class: 'mono', title: j.client }),
      cell(btr(j.pricePerLayerToken)), cell(btr(j.escrow)),
      cell(j.claims.map((c) => `${short(c.worker, 4)} ${c.layerStart}..${c.layerEnd} (${verdict(c)})`).join('; ') || '–'),
      cell(statusText(j.status)))));
  } catch (e) {
    $('jobs').tBodies[0].replaceChildren(el('tr', {}, el('td', { colspan: 6, class: 'error' }, e.message)));
  }
  await showJob(detail);
}

// ---------------------------------------------------------------------------------------------
// Wallet: balances, staking and earnings of an address.

async function lookUp(address) {
  const err = $('wallet-error');
  err.hidden = true;
  await getRpc();
  try {
    const [account, claims, jobs] = await Promise.all([
      rpc.call('bitorch_account', [address]),
      rpc.call('bitorch_claimsOf', [address]),
      rpc.call('bitorch_jobsOf', [address]),
    ]);
    $('wallet').replaceChildren(
      el('div', { class: 'cards' },
        el('div', { class: 'card' }, el('span', { class: 'label' }, 'Free'), el('span', { class: 'big', id: 'free' }, btr(account.free))),
        el('div', { class: 'card' }, el('span', { class: 'label' }, 'Reserved (stake, escrow)'), el('span', { class: 'big' }, btr(account.reserved))),
        el('div', { class: 'card' }, el('span', { class: 'label' }, 'Bonded'), el('span', { class: 'big' }, btr(account.staking?.bonded))),
        el('div', { class: 'card' }, el('span', { class: 'label' }, 'Earned as a worker'), el('span', { class: 'big' }, btr(claims.earned))),
        el('div', { class: 'card' }, el('span', { class: 'label' }, 'Jobs paid as a client'), el('span', { class: 'big' }, String(jobs.length)))),
      el('p', { class: 'muted' }, `Nonce ${account.nonce ?? '–'}.`));
  } catch (e) {
    err.textContent = e.message;
    err.hidden = false;
  }
}

// ---------------------------------------------------------------------------------------------
// Signing in the browser: a key from a pasted secret, kept in this page's memory only;
// transfers and allowances as the chain's extrinsics, API tokens as the node checks them
// (primitives/src/api_token.rs, runtime/src/extrinsic.rs: SCALE, sr25519 "substrate" context).

let lib = null;
/** polkadot.js' crypto (crypto.js, built by scripts/build-web.sh), loaded on first use. */
async function polkadot() {
  if (!lib) {
    lib = await import('/crypto.js');
    await lib.cryptoWaitReady();
  }
  return lib;
}

const signer = { pair: null };
const UNIT = 1000000000000n;
const EXTRINSIC_VERSION = 1;
/** Blocks a transaction stays valid, and blocks per day at the CLI's one block per second. */
const MORTALITY = 64n;
const BLOCKS_PER_DAY = 86400n;

/** "1.5" BTR in plancks. */
function plancks(text) {
  const m = String(text).trim().match(/^(\d+)(?:\.(\d{0,12}))?$/);
  if (!m) throw new Error(`'${text}' is not an amount of BTR (up to 12 decimals)`);
  return BigInt(m[1]) * UNIT + BigInt((m[2] || '').padEnd(12, '0'));
}

function u64le(v) { return lib.bnToU8a(BigInt(v), { bitLength: 64, isLe: true }); }
function u128le(v) { return lib.bnToU8a(BigInt(v), { bitLength: 128, isLe: true }); }

async function chainFacts() {
  const [genesis, header] = await Promise.all([rpc.call('chain_getBlockHash', [0]), rpc.call('chain_getHeader', [])]);
  return { genesis: lib.hexToU8a(genesis), best: BigInt(parseInt(header.number, 16)) };
}

/** Signs `call` (its SCALE bytes) as the chain's extrinsic format and submits it; resolves
 *  once the signer's nonce moved past it (the transaction is in a block). */
async function signAndSubmit(call, what, status) {
  await getRpc();
  const { genesis, best } = await chainFacts();
  const me = signer.pair.address;
  const nonce = BigInt(await rpc.call('system_accountNextIndex', [me]));
  const validUntil = best + MORTALITY;
  const tip = 0n;
  const hash = lib.blake2AsU8a(lib.u8aConcat(lib.stringToU8a('bitorch/tx/1'), new Uint8Array([EXTRINSIC_VERSION]),
    genesis, u64le(nonce), u128le(tip), u64le(validUntil), call), 256);
  const signature = signer.pair.sign(hash);
  const xt = lib.u8aConcat(new Uint8Array([EXTRINSIC_VERSION]), signer.pair.publicKey, signature,
    lib.compactToU8a(nonce), lib.compactToU8a(tip), lib.compactToU8a(validUntil), call);
  status.textContent = `${what}: submitted, waiting for a block…`;
  const txHash = await rpc.call('author_submitExtrinsic', [lib.u8aToHex(xt)]);
  const deadline = Date.now() + 60000;
  for (;;) {
    const account = await rpc.call('bitorch_account', [me]);
    if (BigInt(account.nonce) > nonce) break;
    if (Date.now() > deadline) throw new Error(`${what}: not in a block after a minute (transaction ${txHash})`);
    await new Promise((r) => setTimeout(r, 300));
  }
  status.textContent = `${what}: in a block (transaction ${txHash}).`;
  return txHash;
}

async function useKey(secret) {
  const err = $('key-error');
  err.hidden = true;
  try {
    await polkadot();
    // What `bitorch --suri` takes: a BIP-39 mnemonic, a 32-byte hex seed, or a dev URI
    // (`//Alice`), each with optional derivation paths. Anything else is refused (polkadot.js
    // would take a short string as a raw seed: a typo would silently be another account).
    const uri = secret.trim();
    const phrase = uri.split('/')[0].trim();
    if (phrase && !/^0x[0-9a-fA-F]{64}$/.test(phrase) && !lib.mnemonicValidate(phrase)) {
      throw new Error('expected a 12 or 24-word mnemonic, a 0x seed of 64 hex digits, or a dev URI such as //Alice');
    }
    const keyring = new lib.Keyring({ type: 'sr25519', ss58Format: 42 });
    signer.pair = keyring.addFromUri(uri);
    $('key-status').textContent = `Signing as ${signer.pair.address}.`;
    $('signing').hidden = false;
    $('address').value = signer.pair.address;
    await lookUp(signer.pair.address);
  } catch (e) {
    signer.pair = null;
    $('signing').hidden = true;
    err.textContent = `Not a usable secret: ${e.message}`;
    err.hidden = false;
  }
}

async function transfer() {
  const status = $('transfer-status');
  try {
    const dest = lib.decodeAddress($('transfer-to').value.trim());
    const amount = plancks($('transfer-amount').value);
    // balances.Transfer { dest, amount (compact) }: pallet 0, call 0.
    const call = lib.u8aConcat(new Uint8Array([0, 0]), dest, lib.compactToU8a(amount));
    await signAndSubmit(call, `Sending ${btr(amount)}`, status);
    await lookUp(signer.pair.address);
  } catch (e) {
    status.textContent = e.message;
  }
}

async function makeToken() {
  const status = $('token-status');
  try {
    const { gateway: account } = await config();
    if (!account) throw new Error('this node has no gateway account to make a key for');
    const gateway = lib.decodeAddress(account);
    const amount = plancks($('token-allowance').value);
    const days = BigInt(Math.max(1, Math.min(365, Number($('token-days').value) || 7)));
    await getRpc();
    const { genesis, best } = await chainFacts();
    // jobs.Approve { gateway, amount (compact), expires_at (compact) }: pallet 3, call 5.
    const approve = lib.u8aConcat(new Uint8Array([3, 5]), gateway, lib.compactToU8a(amount),
      lib.compactToU8a(best + days * BLOCKS_PER_DAY));
    await signAndSubmit(approve, `Allowing ${btr(amount)}`, status);
    const user = signer.pair.publicKey;
    const expires = BigInt(Date.now()) + days * 86400000n;
    const payload = lib.u8aConcat(lib.stringToU8a('bitorch/api-token/2'), genesis, user, gateway, u64le(expires), new Uint8Array([0]));
    const signature = signer.pair.sign(payload);
    const token = lib.u8aConcat(user, gateway, u64le(expires), new Uint8Array([0]), signature);
    const box = $('token');
    box.value = `btr_${lib.u8aToHex(token).slice(2)}`;
    box.hidden = false;
    status.textContent = `Allowance of ${btr(amount)} approved; the key below is valid for ${days} days.`;
    await lookUp(signer.pair.address);
  } catch (e) {
    status.textContent = e.message;
  }
}

// ---------------------------------------------------------------------------------------------
// Pages.

function route() {
  const [, page = 'chat', arg = null] = location.hash.split('/');
  const name = ['chat', 'network', 'jobs', 'wallet'].includes(page) ? page : 'chat';
  for (const p of document.querySelectorAll('.page')) p.hidden = p.id !== `page-${name}`;
  for (const a of document.querySelectorAll('nav a')) {
    if (a.dataset.page === name) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  if (name === 'network') startNetwork();
  if (name === 'jobs') refreshJobs(arg);
}

setUpChat();
$('wallet-form').addEventListener('submit', (ev) => { ev.preventDefault(); lookUp($('address').value.trim()); });
$('key-form').addEventListener('submit', (ev) => { ev.preventDefault(); useKey($('secret').value); $('secret').value = ''; });
$('forget-key').addEventListener('click', () => {
  signer.pair = null;
  $('signing').hidden = true;
  $('token').value = '';
  $('key-status').textContent = 'The key is forgotten.';
});
$('transfer-form').addEventListener('submit', (ev) => { ev.preventDefault(); transfer(); });
$('token-form').addEventListener('submit', (ev) => { ev.preventDefault(); makeToken(); });
window.addEventListener('hashchange', route);
route();

#!/usr/bin/env node
// Marginal resident memory per idle /tasks connection of a running server.
//
// Opens --connections raw Engine.IO v4 websockets to <url>/socket.io/?EIO=4&transport=websocket,
// sends the namespace CONNECT `40/tasks,`, waits for each `40/tasks,{"sid"...}` answer (and, for
// identified node connections, the node's `sync` event), holds them (answering the server's
// pings), and reads VmRSS of --pid from /proc before and after (each time after --settle ms).
// Prints one JSON line: the RSS figures and KiB per connection, then closes everything and adds
// the RSS left once they are gone.
//
// Unidentified connections send no Authorization header (vantage6's `always_connect=True`: they
// are connected and ignored). With --fixture (clients/bench/fixture.py's file: jwt_secret_key and
// nodes) each connection is node i of the fixture, with an access token minted like
// src/auth.rs's `mint_access_token` (HS256, vantage6 4.x claims).
//
// --concurrency: connects in flight at once (default 100); equal to --connections it is a connect
// storm. Uses the `ws` package of clients/js/node_modules (a socket.io-client dependency).
//
//   node clients/bench/idle_memory.js --url http://127.0.0.1:7602 --pid 1234 --connections 4000
//
// Raise the open-files limit first (`ulimit -n 20000`): each connection is a descriptor on both
// sides. clients/bench/idle_memory.py starts a fresh server and runs this for each scenario.
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const WebSocket = require(path.join(__dirname, '..', 'js', 'node_modules', 'ws'));

function parseArgs(argv) {
  const opts = {
    url: 'http://127.0.0.1:7602', path: '/socket.io/', pid: null, connections: 4000,
    concurrency: 100, settle: 2000, fixture: null, timeout: 120000, hold: 0,
  };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '');
    if (!(key in opts) || i + 1 >= argv.length) {
      throw new Error(`unknown or incomplete option ${argv[i]}`);
    }
    const v = argv[i + 1];
    opts[key] = typeof opts[key] === 'number' || key === 'pid' ? Number(v) : v;
  }
  if (!opts.pid) throw new Error('--pid (the server process) is required');
  return opts;
}

function vmRssKiB(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /^VmRSS:\s+(\d+) kB/m.exec(status);
  if (!m) throw new Error(`no VmRSS in /proc/${pid}/status`);
  return Number(m[1]);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function b64url(buf) {
  return Buffer.from(buf).toString('base64url');
}

// vantage6 4.x access token (flask-jwt-extended claims), as src/auth.rs mints it.
function mintAccessToken(secret, authId, clientType) {
  const now = Math.floor(Date.now() / 1000);
  const header = b64url(JSON.stringify({ typ: 'JWT', alg: 'HS256' }));
  const claims = b64url(JSON.stringify({
    fresh: false, iat: now, jti: crypto.randomBytes(16).toString('hex'), type: 'access',
    sub: authId, nbf: now, exp: now + 6 * 3600, client_type: clientType, roles: [],
  }));
  const sig = crypto.createHmac('sha256', secret).update(`${header}.${claims}`).digest();
  return `${header}.${claims}.${b64url(sig)}`;
}

// One connection; resolves once connected (and, for a node, synced); rejects on failure.
function connect(wsUrl, token, timeoutMs) {
  return new Promise((resolve, reject) => {
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const ws = new WebSocket(wsUrl, { headers, perMessageDeflate: false });
    let connected = false;
    const timer = setTimeout(() => {
      ws.terminate();
      reject(new Error('timed out'));
    }, timeoutMs);
    const done = () => {
      clearTimeout(timer);
      resolve(ws);
    };
    ws.on('message', (data) => {
      const msg = data.toString();
      if (msg === '2') {
        ws.send('3');
      } else if (msg.startsWith('0')) {
        ws.send('40/tasks,');
      } else if (msg.startsWith('40/tasks,{"sid"')) {
        connected = true;
        if (!token) done();
      } else if (token && connected && msg.startsWith('42/tasks,["sync"')) {
        done();
      } else if (msg.startsWith('44/tasks,')) {
        clearTimeout(timer);
        reject(new Error(`connect refused: ${msg}`));
      }
    });
    ws.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const base = new URL(o.url);
  const wsUrl = `ws://${base.host}${o.path}?EIO=4&transport=websocket`;
  let tokens = null;
  if (o.fixture) {
    const fx = JSON.parse(fs.readFileSync(o.fixture, 'utf8'));
    if (fx.nodes.length < o.connections) {
      throw new Error(`fixture has ${fx.nodes.length} nodes, fewer than --connections`);
    }
    tokens = fx.nodes.slice(0, o.connections)
      .map((n) => mintAccessToken(fx.jwt_secret_key, n.id, 'node'));
  }

  await sleep(o.settle);
  const before = vmRssKiB(o.pid);
  const sockets = [];
  let failed = 0;
  let firstError = null;
  let next = 0;
  const started = process.hrtime.bigint();
  async function worker() {
    while (next < o.connections) {
      const i = next++;
      try {
        sockets.push(await connect(wsUrl, tokens ? tokens[i] : null, o.timeout));
      } catch (e) {
        failed += 1;
        firstError = firstError || String(e.message || e);
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(o.concurrency, o.connections) }, worker));
  const connectSeconds = Number(process.hrtime.bigint() - started) / 1e9;
  await sleep(o.settle + o.hold);
  const after = vmRssKiB(o.pid);
  const result = {
    connections: sockets.length, failed, first_error: firstError,
    identified: Boolean(tokens), concurrency: Math.min(o.concurrency, o.connections),
    connect_seconds: Number(connectSeconds.toFixed(2)),
    rss_before_kib: before, rss_after_kib: after,
    kib_per_connection: sockets.length ? Number(((after - before) / sockets.length).toFixed(2)) : null,
  };
  const closed = new Promise((resolve) => {
    let left = sockets.length;
    if (left === 0) resolve();
    for (const ws of sockets) {
      ws.on('close', () => { left -= 1; if (left === 0) resolve(); });
      ws.close();
    }
  });
  await Promise.race([closed, sleep(30000)]);
  await sleep(o.settle);
  result.rss_closed_kib = vmRssKiB(o.pid);
  console.log(JSON.stringify(result));
  process.exit(failed ? 1 : 0);
}

main().catch((e) => {
  console.error(`idle_memory: ${e.message || e}`);
  process.exit(2);
});

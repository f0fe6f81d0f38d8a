#!/usr/bin/env node
// Connects to <url>/tasks the way the vantage6 UI does
// (io(`${server_url}/tasks`, {withCredentials: true, extraHeaders: {Authorization: `Bearer ${token}`}}))
// and prints every received event as one JSON line on stdout:
//   {"event": "<name>", "data": <payload or null>}
// plus {"event":"connect"} / {"event":"disconnect","data":<reason>} / {"event":"connect_error",...}.
// Lines read from stdin are JSON commands: {"emit": "<event>", "data": <payload>} or {"cmd": "disconnect"}.
//
// usage: node client.js --url http://127.0.0.1:7601 [--token JWT] [--transport polling|websocket|both]
//                       [--duration SECONDS] [--origin ORIGIN]
'use strict';
const { io } = require('socket.io-client');
const readline = require('readline');

function parseArgs(argv) {
  const out = { url: 'http://127.0.0.1:7601', token: null, transport: 'both', duration: 0, origin: null };
  for (let i = 2; i < argv.length; i++) {
    const k = argv[i];
    const v = argv[i + 1];
    if (k === '--url') { out.url = v; i++; }
    else if (k === '--token') { out.token = v; i++; }
    else if (k === '--transport') { out.transport = v; i++; }
    else if (k === '--duration') { out.duration = parseFloat(v); i++; }
    else if (k === '--origin') { out.origin = v; i++; }
    else { console.error(`unknown argument ${k}`); process.exit(2); }
  }
  return out;
}

const args = parseArgs(process.argv);
const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

const extraHeaders = {};
if (args.token) extraHeaders.Authorization = `Bearer ${args.token}`;
if (args.origin) extraHeaders.Origin = args.origin;
const opts = { withCredentials: true, extraHeaders, reconnection: false };
if (args.transport === 'polling') opts.transports = ['polling'];
else if (args.transport === 'websocket') opts.transports = ['websocket'];
else opts.transports = ['polling', 'websocket'];

const socket = io(`${args.url.replace(/\/+$/, '')}/tasks`, opts);

socket.io.on('open', () => {
  socket.io.engine.on('upgrade', (t) => out({ event: 'upgrade', data: t.name }));
});
socket.on('connect', () => {
  out({ event: 'connect', data: { transport: socket.io.engine.transport.name } });
});
socket.on('connect_error', (err) => out({ event: 'connect_error', data: String(err && err.message) }));
socket.on('disconnect', (reason) => { out({ event: 'disconnect', data: reason }); });
socket.onAny((event, ...data) => {
  out({ event, data: data.length === 0 ? null : (data.length === 1 ? data[0] : data) });
});

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  line = line.trim();
  if (!line) return;
  let cmd;
  try { cmd = JSON.parse(line); } catch (e) { console.error(`bad command ${line}`); return; }
  if (cmd.cmd === 'disconnect') { socket.disconnect(); setTimeout(() => process.exit(0), 50); }
  else if (cmd.emit) {
    if (cmd.data === undefined || cmd.data === null) socket.emit(cmd.emit); else socket.emit(cmd.emit, cmd.data);
  }
});
rl.on('close', () => { socket.disconnect(); setTimeout(() => process.exit(0), 50); });

if (args.duration > 0) {
  setTimeout(() => { socket.disconnect(); setTimeout(() => process.exit(0), 50); }, args.duration * 1000);
}

// N socket.io 4.x clients following one task's log (`?task=<id>`), for the fan-out test.
// Prints {"ready":true} once all are connected, then, when the server has disconnected every
// one of them, {"results":[{bytes, sha256, builds, reason}, ...]} with the `building` text
// each one received.
//
//   node followers.js <url> <n> <task id>
const [url, n, task] = process.argv.slice(2);
const io = require('socket.io-client-v4');
const crypto = require('crypto');
const print = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const count = Number(n);
const results = new Array(count);
let connected = 0;
let finished = 0;
for (let i = 0; i < count; i++) {
  const socket = io(url, { query: { task }, transports: ['websocket'], reconnection: false, forceNew: true, timeout: 20000 });
  let text = '';
  let builds = 0;
  socket.on('connect', () => { if (++connected === count) print({ ready: true }); });
  socket.on('building', (chunk) => { text += chunk; });
  socket.on('build', () => { builds += 1; });
  socket.on('connect_error', (err) => { print({ error: String(err && err.message || err) }); process.exit(2); });
  socket.on('disconnect', (reason) => {
    const sha256 = crypto.createHash('sha256').update(text).digest('hex');
    results[i] = { bytes: Buffer.byteLength(text), sha256, builds, reason };
    if (++finished === count) { print({ results }); process.exit(0); }
  });
}
setTimeout(() => { print({ timeout: true, connected, finished }); process.exit(3); }, 180000);

// Load for bench/socketio.sh. Two modes:
//   node socketio-load.js idle <url> <n> '<query json>'   open n connections, wait for every greeting, hold
//   node socketio-load.js rate <url> '<query json>'       one client builds; count `building` messages
const path = require('path');
const io = require(path.join(__dirname, '../crates/cli/tests/node/node_modules/socket.io-client-v4'));
const [mode, url, a, b] = process.argv.slice(2);

if (mode === 'idle') {
  const n = Number(a), query = JSON.parse(b);
  let greeted = 0, failed = 0, opened = 0;
  const open = () => {
    // Open in waves so the accept queue is not the thing measured.
    for (let i = 0; i < 250 && opened < n; i++, opened++) {
      const s = io(url, { query, transports: ['websocket'], reconnection: false, forceNew: true, timeout: 60000 });
      s.on('connect', () => s.on(s.id, () => { greeted++; }));
      s.on('connect_error', () => { failed++; });
    }
    if (opened < n) setTimeout(open, 20);
  };
  open();
  const t0 = Date.now();
  const tick = setInterval(() => {
    if (greeted + failed >= n || Date.now() - t0 > 240000) {
      clearInterval(tick);
      console.log(JSON.stringify({ greeted, failed, secs: (Date.now() - t0) / 1000 }));
      // Hold the connections until the script that measures memory kills us.
    }
  }, 200);
} else {
  const query = JSON.parse(a);
  const s = io(url, { query, transports: ['websocket'], reconnection: false });
  let messages = 0, bytes = 0, first = 0, last = 0, lines = 0;
  s.on('connect', () => s.on(s.id, (m) => { if (m.data.action === 'connect') s.emit('build'); }));
  // The window is the build's own output (lines starting `line `), as in ../shared/peer-bench:
  // what npm prints before it is not the rate being measured.
  s.on('building', (text) => {
    if (!/^line \d/m.test(text)) return;
    const now = process.hrtime.bigint();
    if (!first) first = now;
    last = now;
    messages++; bytes += Buffer.byteLength(text);
    lines += (text.match(/\n/g) || []).length;
  });
  s.on('disconnect', () => {
    const secs = Number(last - first) / 1e9;
    console.log(JSON.stringify({ messages, bytes, lines, secs }));
    process.exit(0);
  });
}

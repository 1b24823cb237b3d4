// A recording socket.io client for cloudbuild's compatibility tests.
// Prints one JSON line per thing that happens; exits when the server disconnects it.
//
//   node client.js <2|4> <websocket|polling> <url> '<query json>' ['<auth json>'] [--leave-after-actions N | --reconnect]
//
// --reconnect: reconnect (quickly) when the connection drops, as the original CLI's socket.io
// client does by default; it still ends when the server disconnects it.
const [major, transport, url, queryJson, authJson, ...rest] = process.argv.slice(2);
const io = require(major === '2' ? 'socket.io-client-v2' : 'socket.io-client-v4');
const query = JSON.parse(queryJson);
const auth = authJson ? JSON.parse(authJson) : undefined;
const leaveAfter = rest[0] === '--leave-after-actions' ? Number(rest[1]) : Infinity;
const reconnect = rest[0] === '--reconnect';
const print = (o) => process.stdout.write(JSON.stringify(o) + '\n');

const opts = { query, transports: [transport], reconnection: reconnect, timeout: 5000, forceNew: true };
if (reconnect) Object.assign(opts, { reconnectionDelay: 100, reconnectionDelayMax: 500 });
if (auth && major !== '2') opts.auth = auth;
const socket = io(url, opts);
let actions = 0;
const done = () => setTimeout(() => process.exit(0), 50);
setTimeout(() => { print({ type: 'timeout' }); process.exit(3); }, 120000);

socket.on('connect', () => {
  print({ type: 'connect', id: socket.id });
  // The greeting comes on the event named after the socket id, as the original server sends it.
  socket.on(socket.id, (msg) => {
    print({ type: 'event', event: 'id', data: msg });
    if (msg.data.action === 'connect') socket.emit('build');
  });
});
socket.on('build', (msg) => {
  print({ type: 'event', event: 'build', data: msg });
  actions += 1;
  if (actions >= leaveAfter) { print({ type: 'left' }); socket.close(); done(); }
});
socket.on('building', (msg) => print({ type: 'event', event: 'building', data: msg }));
socket.on('connect_error', (err) => { print({ type: 'connect_error', message: String(err && err.message || err) }); done(); });
socket.on('error', (err) => print({ type: 'error', message: String(err && err.message || err) }));
socket.on('disconnect', (reason) => {
  print({ type: 'disconnect', reason });
  // A dropped connection is reconnected by the client itself; the server's disconnect ends it.
  if (!reconnect || reason === 'io server disconnect' || reason === 'io client disconnect') done();
});

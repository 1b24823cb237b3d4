// A client written the way the original cloud-build CLI (imooc-cli's cloudbuild, socket.io-client
// 2.x) is: connect with the query, listen on the socket-id event, emit `build`, print every
// message, stop on the failure actions, end on disconnect. Prints "RESULT true|false" last.
//
//   node original-cli.js <url> '<query json>'
const io = require('socket.io-client-v2');
const [url, queryJson] = process.argv.slice(2);
const FAILED_CODE = ['prepare failed', 'download failed', 'install failed', 'build failed', 'pre-publish failed', 'publish failed', 'error'];
const parseMsg = (msg) => ({ action: msg.data.action, message: msg.data.payload.message });

function init() {
  return new Promise((resolve, reject) => {
    const socket = io(url, { query: JSON.parse(queryJson), transports: ['websocket'] });
    const timer = setTimeout(() => { console.log('云构建服务连接超时，自动终止'); socket.disconnect(); reject(new Error('timeout')); }, 5000);
    socket.on('connect', () => {
      clearTimeout(timer);
      const { id } = socket;
      socket.on(id, (msg) => { const m = parseMsg(msg); console.log('MSG', m.action, m.message); });
      resolve(socket);
    });
  });
}

function build(socket) {
  return new Promise((resolve) => {
    let ok = true;
    socket.emit('build');
    socket.on('build', (msg) => {
      const m = parseMsg(msg);
      if (FAILED_CODE.indexOf(m.action) >= 0) {
        console.log('FAILED', m.action, m.message);
        ok = false;
        socket.disconnect();
        socket.close();
        resolve(ok);
      } else {
        console.log('ACTION', m.action, m.message);
      }
    });
    socket.on('building', (msg) => console.log('OUT', JSON.stringify(msg)));
    socket.on('disconnect', () => resolve(ok));
  });
}

init()
  .then(build)
  .then((ok) => { console.log('RESULT', ok); process.exit(0); })
  .catch((e) => { console.log('ERROR', e.message); console.log('RESULT', false); process.exit(0); });

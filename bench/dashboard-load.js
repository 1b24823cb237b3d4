// For bench/dashboard.sh. Two modes:
//   node dashboard-load.js page <url>     load the page in Chromium (playwright-core): prints
//                                          {"load_ms", "lines"} (DOM line nodes)
//   node dashboard-load.js follow <url> N open N live-log streams (SSE) and keep them open
//                                          until stdin closes; prints "open" once all answered
const mode = process.argv[2];
if (mode === 'page') {
  const { chromium } = require(require.resolve('playwright-core', { paths: [process.env.NODE_DIR] }));
  (async () => {
    const browser = await chromium.launch({
      executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
      args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update'],
    });
    const page = await browser.newPage();
    const started = Date.now();
    await page.goto(process.argv[3], { waitUntil: 'load' });
    const load_ms = Date.now() - started;
    const lines = await page.locator('#log .l').count();
    await browser.close();
    process.stdout.write(JSON.stringify({ load_ms, lines }) + '\n');
  })().catch((e) => { console.error(e); process.exit(1); });
} else {
  const http = require('http');
  const [url, n] = [process.argv[3], Number(process.argv[4])];
  let answered = 0;
  for (let i = 0; i < n; i++) {
    http.get(url, { headers: { accept: 'text/event-stream' } }, (res) => {
      res.on('data', () => {});
      if (++answered === n) process.stdout.write('open\n');
    }).on('error', (e) => { console.error(e.message); process.exit(1); });
  }
  process.stdin.on('end', () => process.exit(0));
  process.stdin.resume();
}

// For bench/dashboard.sh. Two modes:
//   node dashboard-load.js page <url>     load the page in Chromium (playwright-core): prints
//                                          {"load_ms", "lines"} (DOM line nodes)
//   node dashboard-load.js follow <url> N open N live-log streams (SSE) and keep them open
//                                          until stdin closes; prints "open" once all answered
//   node dashboard-load.js firehose <url> S  keep a running build's page open for S seconds;
//                                          every 5 s prints {"t", "lines" (line nodes),
//                                          "nodes" (all elements), "heap_mb" (JS heap used),
//                                          "lag_ms" (now minus the time stamped on the last
//                                          line shown: `fire <n> <ms since epoch>`)}
const mode = process.argv[2];
if (mode === 'firehose') {
  const { chromium } = require(require.resolve('playwright-core', { paths: [process.env.NODE_DIR] }));
  (async () => {
    const browser = await chromium.launch({
      executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
      args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
        '--enable-precise-memory-info', '--js-flags=--expose-gc'],
    });
    const page = await browser.newPage();
    await page.goto(process.argv[3], { waitUntil: 'load' });
    const seconds = Number(process.argv[4]);
    for (let t = 5; t <= seconds; t += 5) {
      await page.waitForTimeout(5000);
      const s = await page.evaluate(() => {
        if (window.gc) window.gc();
        const last = [...document.querySelectorAll('#log .l code')].reverse().find((c) => c.textContent.startsWith('fire '));
        const stamp = last ? Number(last.textContent.split(' ')[2]) : NaN;
        return {
          lines: document.querySelectorAll('#log .l').length,
          nodes: document.getElementsByTagName('*').length,
          heap_mb: Math.round(performance.memory.usedJSHeapSize / 1048576 * 10) / 10,
          lag_ms: Date.now() - stamp,
        };
      });
      process.stdout.write(JSON.stringify({ t, ...s }) + '\n');
    }
    await browser.close();
  })().catch((e) => { console.error(e); process.exit(1); });
} else if (mode === 'page') {
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

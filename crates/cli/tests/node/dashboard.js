// Drives the dashboard's build page in Debian's Chromium (playwright-core, no downloaded
// browser) while the build runs, for cloudbuild's browser test. Prints one JSON line:
//   {"counts": [the last line number shown, over time], "lines": [final log line texts], "state": "...",
//    "scriptRan": false, "trimmed": whether the note about lines that left the page shows}
//
//   node dashboard.js <page url> <screenshot dir>
const { chromium } = require('playwright-core');
const [url, shots] = process.argv.slice(2);

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  const out = { counts: [], lines: [], state: '', scriptRan: false };
  for (const scheme of ['light', 'dark']) {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 }, colorScheme: scheme });
    page.on('dialog', async (d) => { out.scriptRan = true; await d.dismiss(); });
    await page.goto(url);
    if (scheme === 'light') {
      // The build starts printing once the page is open (see SLOW_BUILD).
      if (process.env.READY_FILE) require('fs').writeFileSync(process.env.READY_FILE, '1');
      // Sample the number of log lines until the page says the build ended (live over SSE,
      // without reloading).
      const deadline = Date.now() + 90000;
      for (;;) {
        // The number of the last line shown (the page keeps at most 5,000 line nodes, so their
        // count stops growing; the numbers go on).
        out.counts.push(await page.evaluate(() => {
          const last = document.querySelector('#log .l:last-child');
          return last ? Number(last.id.slice(1)) : 0;
        }));
        const state = (await page.locator('#state').textContent()).trim();
        if (/succeeded|failed|cancelled|timed out/.test(state)) { out.state = state; break; }
        if (Date.now() > deadline) { out.state = 'timeout: ' + state; break; }
        await page.waitForTimeout(150);
      }
      await page.waitForTimeout(300);
      out.lines = await page.locator('#log .l code').allTextContents();
      out.trimmed = await page.locator('#trimmed').isVisible();
    }
    await page.screenshot({ path: `${shots}/build-${scheme}.png`, fullPage: true });
    await page.close();
  }
  await browser.close();
  process.stdout.write(JSON.stringify(out) + '\n');
})().catch((e) => { console.error(e); process.exit(1); });

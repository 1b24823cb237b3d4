// Walks the whole dashboard in Debian's Chromium (playwright-core, no downloaded browser) as
// each role, for cloudbuild's browser test (crates/cli/tests/e2e/dashboard_tour.rs), and saves
// screenshots of every page in both languages, light and dark. Prints one JSON report.
//
//   node dashboard-tour.js '<plan JSON>'
//   plan: {"url", "password", "shots", "site", "tasks": {"first", "second", "big", "running"}}
const { chromium } = require('playwright-core');
const plan = JSON.parse(process.argv[2]);
const { url, password, shots, tasks } = plan;
const report = { script_ran: false };

const where = (page) => { const u = new URL(page.url()); return u.pathname + u.search; };
const count = (page, selector) => page.locator(selector).count();
const lang = (page) => page.evaluate(() => document.documentElement.lang);

async function context(browser, options) {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 }, locale: 'en-US', ...options });
  ctx.on('page', (p) => p.on('dialog', async (d) => { report.script_ran = true; await d.dismiss(); }));
  const page = await ctx.newPage();
  return { ctx, page };
}

async function signIn(page, user) {
  await page.goto(`${url}/projects`);
  await page.fill('input[name=user]', user);
  await page.fill('input[name=password]', password);
  await Promise.all([page.waitForURL(/\/projects$/), page.click('button.primary')]);
}

// What a role's pages offer: cancel on the running build, rollback and settings on the project.
async function buttons(page, project, task) {
  await page.goto(`${url}/tasks/${task}`);
  const cancel = await count(page, 'form[action$="/cancel"]');
  await page.goto(`${url}/projects/${project}`);
  return { cancel, rollback: await count(page, 'form[action$="/rollback"]'), settings: await count(page, '#settings') };
}

// A form post the page does not offer, sent by the page itself (same origin, the session's
// own CSRF token from its sign-out form): the server must refuse it.
async function forged(page, path, fields) {
  return page.evaluate(async ([path, fields]) => {
    const csrf = document.querySelector('input[name=csrf]').value;
    const body = new URLSearchParams({ csrf, ...fields });
    const resp = await fetch(path, { method: 'POST', body, redirect: 'manual' });
    return resp.status;
  }, [path, fields]);
}

async function tour(browser) {
  // A guest is sent to the login form.
  {
    const { ctx, page } = await context(browser);
    await page.goto(`${url}/projects`);
    report.guest = where(page);
    await ctx.close();
  }
  // A reporter reads but may press nothing; then signs out.
  {
    const { ctx, page } = await context(browser);
    await signIn(page, 'rep');
    report.rep_buttons = await buttons(page, 'tour', tasks.running);
    report.rep_posts = {
      cancel: await forged(page, `/tasks/${tasks.running}/cancel`, {}),
      rollback: await forged(page, '/projects/tour/rollback', { env: 'test', to: '1.0.0' }),
      workers: (await page.goto(`${url}/workers`)).status(),
    };
    await page.goto(`${url}/projects`);
    await Promise.all([page.waitForURL(/\/login/), page.click('form[action="/logout"] button')]);
    await page.goto(`${url}/projects`);
    report.after_logout = where(page);
    await ctx.close();
  }
  // A developer cancels the running build from its page, and may not roll back.
  {
    const { ctx, page } = await context(browser);
    await signIn(page, 'dev');
    report.dev_buttons = await buttons(page, 'tour', tasks.running);
    report.dev_posts = { rollback: await forged(page, '/projects/tour/rollback', { env: 'test', to: '1.0.0' }) };
    // A second tab, in Chinese, watches the build: its badge must change live, without a reload.
    const watcher = await ctx.newPage();
    await watcher.goto(`${url}/tasks/${tasks.running}?locale=zh-CN`);
    await watcher.evaluate(() => { window.notReloaded = true; });
    await page.goto(`${url}/tasks/${tasks.running}`);
    await Promise.all([page.waitForURL(new RegExp(`/tasks/${tasks.running}$`)), page.click('form[action$="/cancel"] button')]);
    await watcher.waitForFunction(() => /s-cancelled/.test(document.getElementById('state').className), null, { timeout: 60000 });
    report.dev_cancelled = {
      badge: (await watcher.locator('#state').textContent()).trim(),
      live: await watcher.evaluate(() => window.notReloaded === true),
    };
    await ctx.close();
  }
  // A maintainer rolls the test site back to 1.0.0 from the project page.
  {
    const { ctx, page } = await context(browser);
    await signIn(page, 'max');
    report.max_buttons = await buttons(page, 'tour', tasks.second);
    await page.goto(`${url}/projects/tour`);
    const release = page.locator(`input[name=task][value="${tasks.first}"]`);
    const form = page.locator('form[action$="/rollback"]').filter({ has: release });
    await Promise.all([page.waitForURL(/\/projects\/tour$/), form.locator('button').click()]);
    await page.goto(plan.site);
    report.site_after_rollback = await page.locator('body').innerText();
    await ctx.close();
  }
  // An admin's pages; the language by the switch, its cookie, `?locale=`; the big log.
  {
    const { ctx, page } = await context(browser);
    await signIn(page, 'root');
    report.admin_pages = {};
    for (const p of ['workers', 'users', 'audit']) report.admin_pages[p] = (await page.goto(`${url}/${p}`)).status();
    report.lang = {};
    await page.goto(`${url}/projects`);
    await Promise.all([page.waitForURL(/locale=zh-CN/), page.click('a[hreflang="zh-CN"]')]);
    report.lang.switch = await lang(page);
    await page.goto(`${url}/audit`);
    report.lang.next_page = await lang(page);
    await page.goto(`${url}/projects?locale=en-US`);
    report.lang.query = await lang(page);
    const started = Date.now();
    await page.goto(`${url}/tasks/${tasks.big}`, { waitUntil: 'load' });
    report.big = {
      load_ms: Date.now() - started,
      lines: await count(page, '#log .l'),
      red: (await count(page, '#log .l .fg1')) > 0,
    };
    // The build's last line of output (the stage lines follow it).
    const texts = await page.locator('#log .l code').allTextContents();
    report.big.markup = texts.filter((t) => t.includes('alert(1)')).pop() || null;
    report.big.before = texts.filter((t) => t.startsWith('line ')).pop() || null;
    await ctx.close();
  }
  {
    const { ctx, page } = await context(browser, { locale: 'zh-CN' });
    await page.goto(`${url}/login`);
    report.lang.accept_language = await lang(page);
    await ctx.close();
  }
}

// Every page, in both languages, light and dark; and two pages on a phone.
async function screenshots(browser) {
  const pages = {
    projects: '/projects',
    project: '/projects/tour',
    build: `/tasks/${tasks.second}`,
    'big-log': `/tasks/${tasks.big}`,
    search: `/tasks/${tasks.big}/search?q=line+199999`,
    workers: '/workers',
    users: '/users',
    audit: '/audit',
    tokens: '/tokens',
  };
  for (const locale of ['en-US', 'zh-CN']) {
    for (const colorScheme of ['light', 'dark']) {
      const { ctx, page } = await context(browser, { locale, colorScheme });
      await page.goto(`${url}/login`);
      await page.screenshot({ path: `${shots}/login-${locale}-${colorScheme}.png` });
      await signIn(page, 'root');
      for (const [name, path] of Object.entries(pages)) {
        await page.goto(url + path);
        await page.screenshot({ path: `${shots}/${name}-${locale}-${colorScheme}.png`, fullPage: name !== 'big-log' });
      }
      await ctx.close();
    }
  }
  const { ctx, page } = await context(browser, { viewport: { width: 390, height: 844 }, isMobile: true });
  await signIn(page, 'root');
  for (const [name, path] of [['project', '/projects/tour'], ['build', `/tasks/${tasks.second}`]]) {
    await page.goto(url + path);
    await page.screenshot({ path: `${shots}/phone-${name}.png`, fullPage: true });
  }
  await ctx.close();
}

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--host-resolver-rules=MAP *.localhost 127.0.0.1'],
  });
  try {
    await tour(browser);
    await screenshots(browser);
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(report) + '\n');
})().catch((e) => { console.error(e); process.stdout.write(JSON.stringify(report) + '\n'); process.exit(1); });

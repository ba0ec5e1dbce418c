// The login form in a real browser: a wrong password is refused on the page, the right one sets the
// session cookie and lands on the page asked for, and the API then knows who is there.
import { URL, run, newPage, login, screenshot, check } from './lib.mjs';

const password = process.env.ALICE_PASSWORD;

await run('login', async (browser) => {
  const page = await newPage(browser);

  const anonymous = await page.goto(`${URL}/api/v1/me`);
  check(anonymous.status() === 401, `GET /api/v1/me without a session answered ${anonymous.status()}`);

  await page.goto(`${URL}/login?next=${encodeURIComponent('/api/v1/me')}`);
  await screenshot(page, 'login-form');
  await page.fill('input[name=user]', 'alice');
  await page.fill('input[name=password]', 'not-her-password');
  const [refused] = await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
  check(refused.status() === 401, `a wrong password answered ${refused.status()}`);
  const alert = await page.textContent('[role=alert]');
  check(alert && alert.length > 0, 'a wrong password shows no error on the page');
  await screenshot(page, 'login-refused');

  await login(page, 'alice', password, '/api/v1/me');
  check(new globalThis.URL(page.url()).pathname === '/api/v1/me', `landed on ${page.url()}`);
  const me = JSON.parse(await page.textContent('body'));
  check(me.user === 'alice', `/api/v1/me says ${JSON.stringify(me)}`);
  const cookies = await page.context().cookies();
  check(cookies.some((c) => c.httpOnly), `no HttpOnly session cookie: ${JSON.stringify(cookies)}`);
  // The only errors are the refusals asked for above (the browser logs every 401 it receives).
  const unexpected = page.consoleErrors.filter((e) => !/status of 401/.test(e) && !/favicon\.ico/.test(e));
  check(unexpected.length === 0, `console errors: ${unexpected.join(' | ')}`);
});

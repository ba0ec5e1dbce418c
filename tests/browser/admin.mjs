// The admin page in a real browser: the instructor pauses the queue, three participants submit jobs
// (through the API, as their ComfyUI would), the page shows them live; the instructor moves one to the
// front and pauses a user; after resuming, the others' jobs run and none of the paused user's starts;
// resuming the user runs theirs. The script prints the order the page showed (`shown: …`) and the paused
// user's jobs (`held: …`); the Rust side compares them with the SIMULATED worker's own record of what it
// started, in order.
import { URL, run, newPage, login, screenshot, check } from './lib.mjs';

const tokens = JSON.parse(process.env.TOKENS);
const workflow = JSON.parse(process.env.WORKFLOW);
const WAIT = { timeout: 30_000 };

async function call(user, method, path, body) {
  const resp = await fetch(`${URL}${path}`, {
    method,
    headers: { authorization: `Bearer ${tokens[user]}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: resp.status, json: await resp.json() };
}

async function submit(user) {
  const { status, json } = await call(user, 'POST', '/api/v1/jobs', { prompt: workflow });
  check(status === 201, `${user}'s submit answered ${status}: ${JSON.stringify(json)}`);
  return json.id;
}

const queuedRows = (page) =>
  page.$$eval('#jobs tbody tr', (rows) => rows.map((r) => ({ id: r.dataset.job, owner: r.dataset.owner, state: r.dataset.state, position: r.dataset.position })));

await run('admin', async (browser) => {
  const page = await newPage(browser, { viewport: { width: 1440, height: 900 } });

  // Not logged in: the page sends the browser to the login form, and back after it.
  await page.goto(`${URL}/admin/`);
  check(new globalThis.URL(page.url()).pathname === '/login', `an anonymous visit landed on ${page.url()}`);
  await login(page, 'teacher', process.env.TEACHER_PASSWORD, '/admin/');
  await page.waitForSelector('#conn[data-state=live]', WAIT);
  await page.waitForSelector('body[data-ready=true]', WAIT);
  await screenshot(page, 'admin-empty');

  // Pausing the queue asks first.
  await page.click('#queue-toggle');
  await page.waitForSelector('#confirm[open]', WAIT);
  await screenshot(page, 'admin-confirm-pause');
  await page.click('#confirm-yes');
  await page.waitForSelector('#queue-state.paused', WAIT);

  // Three participants submit; their jobs appear without reloading the page.
  const ids = { alice: [], bob: [], carol: [] };
  for (let round = 0; round < 2; round++) {
    for (const user of ['alice', 'bob', 'carol']) ids[user].push(await submit(user));
  }
  await page.waitForFunction(() => document.querySelectorAll('#jobs tbody tr[data-state=queued]').length === 6, null, WAIT);
  const owners = new Set((await queuedRows(page)).map((r) => r.owner));
  check(owners.size === 3 && owners.has('alice') && owners.has('bob') && owners.has('carol'), `owners shown: ${[...owners]}`);
  await page.waitForFunction(() => document.querySelector('tr[data-user=carol] td:nth-child(3)')?.textContent === '2', null, WAIT);
  await screenshot(page, 'admin-three-users');

  // Carol's second job goes to the front.
  const moved = ids.carol[1];
  await page.click(`tr[data-job="${moved}"] button[data-action=front]`);
  await page.waitForSelector(`tr[data-job="${moved}"][data-position="0"]`, WAIT);

  // Bob is paused: his jobs are held and leave the order.
  await page.click('tr[data-user=bob] button[data-action=pause-user]');
  await page.waitForSelector('tr[data-user=bob][data-paused=true]', WAIT);
  await page.waitForFunction(
    (bob) => bob.every((id) => document.querySelector(`tr[data-job="${id}"]`)?.dataset.position === ''),
    ids.bob,
    WAIT,
  );
  const shown = (await queuedRows(page)).filter((r) => r.position !== '').map((r) => r.id);
  check(shown.length === 4 && shown[0] === moved, `order shown after the move: ${shown}`);
  check(!shown.some((id) => ids.bob.includes(id)), 'a paused user\'s job is still in the order');
  await screenshot(page, 'admin-reordered');

  console.log(`shown: ${shown.join(',')}`);
  console.log(`held: ${ids.bob.join(',')}`);

  // Resume the queue: the four jobs run, none of Bob's.
  await page.click('#queue-toggle');
  await page.waitForSelector('#queue-state.running', WAIT);
  await page.waitForSelector('#jobs tbody tr[data-state=running]', WAIT);
  await screenshot(page, 'admin-running');
  await page.waitForFunction(
    (bob) => {
      const rows = [...document.querySelectorAll('#jobs tbody tr')];
      return rows.length === 2 && rows.every((r) => bob.includes(r.dataset.job));
    },
    ids.bob,
    WAIT,
  );
  for (const id of shown) {
    const owner = Object.keys(ids).find((u) => ids[u].includes(id));
    const { json } = await call(owner, 'GET', `/api/v1/jobs/${id}`);
    check(json.state === 'succeeded', `job ${id} is ${json.state}`);
  }
  for (const id of ids.bob) {
    const { json } = await call('bob', 'GET', `/api/v1/jobs/${id}`);
    check(json.state === 'queued', `bob's paused job ${id} is ${json.state}`);
  }
  await page.waitForSelector('tr[data-user=alice] td:nth-child(3)', WAIT);
  await screenshot(page, 'admin-bob-held');

  // Resume Bob: his jobs run after all.
  await page.click('tr[data-user=bob] button[data-action=resume-user]');
  await page.waitForSelector('#jobs-empty:not([hidden])', WAIT);

  // The audit log on the page says who did what.
  await page.waitForFunction(() => document.querySelectorAll('#audit li').length === 5, null, WAIT);
  const audit = await page.$$eval('#audit li', (items) => items.map((li) => li.textContent));
  for (const words of ['paused the queue', `moved carol's job ${moved.slice(0, 8)} to the front`, 'paused bob', 'resumed the queue', 'resumed bob']) {
    check(audit.some((line) => line.includes('teacher') && line.includes(words)), `no audit line with "${words}": ${audit.join(' | ')}`);
  }
  // The day's charts have something to show.
  check(await page.$$eval('#chart-depth rect', (r) => r.length) > 0, 'the queue-depth chart is empty');
  check(await page.$$eval('#chart-wait rect', (r) => r.length) > 0, 'the wait chart is empty');
  await screenshot(page, 'admin-done');
  // The login form (not this page) has no icon, so the browser's own favicon request gets a 404 there.
  const errors = page.consoleErrors.filter((e) => !/favicon\.ico/.test(e));
  check(errors.length === 0, `console errors: ${errors.join(' | ')}`);
  check(page.failedRequests.length === 0, `failed requests: ${page.failedRequests.join(' | ')}`);

  // A participant is refused the page.
  const other = await newPage(browser);
  await login(other, 'alice', process.env.ALICE_PASSWORD, '/admin/');
  const refused = await other.goto(`${URL}/admin/`);
  check(refused.status() === 403, `a participant got ${refused.status()} for the admin page`);
});

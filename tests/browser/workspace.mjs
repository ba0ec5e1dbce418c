// Every user's ComfyUI workspace in a real browser: the official frontend served by comfyume at
// /u/<user>/, a fixture workflow loaded and queued (it runs as a comfyume job on a SIMULATED worker),
// the output image shown; a workflow saved and reopened; two users in two browser contexts never see each
// other's prompts; the operator's default workflow opens on a first visit (and not over the user's
// changes on the next) and the operator's templates are in every user's template browser. The Rust side (tests/tests/browser_workspace.rs) starts the server and checks the
// jobs afterwards.
import { URL, run, newPage, login, screenshot, check } from './lib.mjs';

const workflow = JSON.parse(process.env.WORKFLOW);
const templates = process.env.TEMPLATES.split(',');
// The default workflow (examples/templates/starter.json).
const STARTER = ['EmptyImage', 'SaveImage'];
const WAIT = { timeout: 90_000 };

// Console errors a real ComfyUI gives too (protocol reference §10): the optional user.css files, the
// template index of the separate templates package, and calls to the internet (offline here).
const EXPECTED = [
  /\/user\.css\b/,
  /\/api\/userdata\/user\.css/,
  /\/api\/userdata\?dir=(subgraphs|workflows)&/, // 404 "Directory not found" until the first save
  /Error loading core workflow templates/, // the separate comfyui-workflow-templates package
  /comfy\.templates\.json/,
  /\/templates\/index[^ ]*\.json/,
  /api\.comfy\.org/,
  /huggingface\.co/,
  /ERR_NAME_NOT_RESOLVED|ERR_INTERNET_DISCONNECTED|ERR_CONNECTION_REFUSED/,
];
const unexpected = (page) => page.consoleErrors.filter((e) => !EXPECTED.some((re) => re.test(e)));

/** Opens `user`'s workspace in its own context, recording every WebSocket text frame it receives. */
async function openWorkspace(browser, user) {
  const page = await newPage(browser);
  page.frames_ = [];
  page.on('websocket', (ws) => ws.on('framereceived', (f) => typeof f.payload === 'string' && page.frames_.push(f.payload)));
  const started = Date.now();
  await login(page, user, process.env[`${user.toUpperCase()}_PASSWORD`], `/u/${user}/`);
  check(new globalThis.URL(page.url()).pathname === `/u/${user}/`, `${user} landed on ${page.url()}`);
  await page.waitForFunction(() => window.app?.graph && document.querySelector('canvas') && !document.getElementById('splash-loader'), null, WAIT);
  page.loadMs = Date.now() - started;
  return page;
}

const nodeTypes = () => window.app.graph.nodes.map((n) => n.type).sort();

/** Waits until the graph in `page` has nodes of exactly the types `want`. */
async function waitForNodes(page, want, what) {
  try {
    await page.waitForFunction((want) => JSON.stringify(window.app.graph.nodes.map((n) => n.type).sort()) === JSON.stringify(want), want, { timeout: 30_000 });
  } catch {
    throw new Error(`${what}: the graph has ${JSON.stringify(await page.evaluate(nodeTypes))}, not ${JSON.stringify(want)}`);
  }
}

/** Opens the frontend's template browser and returns its text (then closes it; a screenshot first). */
async function templateBrowserText(page, shot) {
  await page.evaluate(() => window.app.extensionManager.command.execute('Comfy.BrowseTemplates'));
  const dialog = page.locator('[role=dialog]').filter({ hasText: 'comfyume' });
  await dialog.first().waitFor(WAIT);
  await page.waitForFunction((names) => names.every((n) => document.body.innerText.includes(n)), templates, WAIT).catch(() => {});
  const text = await dialog.first().innerText();
  await screenshot(page, shot);
  await page.keyboard.press('Escape');
  return text;
}

/** Loads the API-format fixture into the graph and presses Queue the way the frontend does. */
async function queueFixture(page) {
  await page.evaluate(async (wf) => {
    await window.app.loadApiJson(wf, 'fixture.json');
  }, workflow);
  const [response] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith('/api/prompt') && r.request().method() === 'POST', WAIT),
    page.evaluate(() => window.app.queuePrompt(0, 1)),
  ]);
  check(response.status() === 200, `POST /api/prompt answered ${response.status()}: ${await response.text()}`);
  return (await response.json()).prompt_id;
}

await run('workspace', async (browser) => {
  // Anonymous: sent to the login form.
  const anon = await newPage(browser);
  await anon.goto(`${URL}/u/alice/`);
  check(new globalThis.URL(anon.url()).pathname === '/login', `an anonymous visit landed on ${anon.url()}`);
  await anon.context().close();

  const alice = await openWorkspace(browser, 'alice');
  const bob = await openWorkspace(browser, 'bob');
  console.log(`load_ms: ${alice.loadMs},${bob.loadMs}`);
  await screenshot(alice, 'workspace-loaded');

  // A first visit opens the operator's default workflow, for each of them.
  await waitForNodes(alice, STARTER, "alice's first visit");
  await waitForNodes(bob, STARTER, "bob's first visit");
  // The operator's templates are in both template browsers.
  for (const [user, page] of [['alice', alice], ['bob', bob]]) {
    const text = await templateBrowserText(page, `workspace-templates-${user}`);
    for (const name of templates) check(text.includes(name), `${user}'s template browser lacks ${name}: ${text}`);
  }
  // Alice changes it (removes a node, as the frontend records an edit); her next visit opens her
  // version, not the default again.
  await alice.evaluate(() => {
    const save = window.app.graph.nodes.find((n) => n.type === 'SaveImage');
    window.app.graph.remove(save);
    window.app.extensionManager.workflow.activeWorkflow.changeTracker.checkState();
  });
  await alice.waitForTimeout(1500);
  await alice.goto(`${URL}/u/alice/`);
  await alice.waitForFunction(() => window.app?.graph && document.querySelector('canvas') && !document.getElementById('splash-loader'), null, WAIT);
  await waitForNodes(alice, ['EmptyImage'], "alice's second visit");
  check(new globalThis.URL(alice.url()).search === '', `alice's second visit went to ${alice.url()}`);

  // Alice queues the fixture; the output image comes back through her own /view.
  await alice.keyboard.press('Escape');
  await bob.keyboard.press('Escape');
  const viewed = alice.waitForResponse((r) => r.url().includes('/u/alice/api/view?') && r.status() === 200, WAIT);
  viewed.catch(() => {});
  const aliceId = await queueFixture(alice);
  const view = await viewed;
  check((view.headers()['content-type'] || '').startsWith('image/'), `the output came as ${view.headers()['content-type']}`);
  check(view.url().includes(encodeURIComponent(aliceId)) || view.url().includes(aliceId), `the thumbnail is not this prompt's: ${view.url()}`);
  await alice.waitForFunction((id) => window.app.nodeOutputs && Object.values(window.app.nodeOutputs).some((o) => (o.images || []).some((i) => i.subfolder.startsWith(id))), aliceId, WAIT);
  await alice.waitForTimeout(500);
  await screenshot(alice, 'workspace-output');
  console.log(`alice_prompt: ${aliceId}`);

  // Bob queues his own; each sees only their own prompt on the wire.
  const bobViewed = bob.waitForResponse((r) => r.url().includes('/u/bob/api/view?') && r.status() === 200, WAIT);
  bobViewed.catch(() => {});
  const bobId = await queueFixture(bob);
  await bobViewed;
  console.log(`bob_prompt: ${bobId}`);
  check(alice.frames_.some((f) => f.includes(aliceId)), 'alice saw nothing of her own prompt');
  check(!alice.frames_.some((f) => f.includes(bobId)), 'alice received a message of bob\'s prompt');
  check(!bob.frames_.some((f) => f.includes(aliceId)), 'bob received a message of alice\'s prompt');
  await screenshot(bob, 'workspace-bob');

  // Save the workflow under a name (the frontend's Save command and its name prompt), reload, and open
  // it again from the server. First-time users get ComfyUI's template browser; it is closed first.
  await alice.keyboard.press('Escape');
  await alice.waitForTimeout(500);
  const saved = alice.waitForResponse((r) => r.url().includes('/u/alice/api/userdata/workflows%2F') && r.request().method() === 'POST', WAIT);
  saved.catch(() => {});
  await alice.evaluate(() => { window.app.extensionManager.command.execute('Comfy.SaveWorkflow'); });
  await alice.waitForTimeout(1500);
  await screenshot(alice, 'workspace-save-prompt');
  await alice.keyboard.press('Control+A');
  await alice.keyboard.type('from-the-browser');
  await alice.keyboard.press('Enter');
  const savedResp = await saved;
  check(savedResp.status() === 200, `saving answered ${savedResp.status()}`);
  const savedJson = await savedResp.json();
  const savedPath = typeof savedJson === "string" ? savedJson : savedJson.path;
  console.log(`saved: ${JSON.stringify(savedPath)}`);
  await alice.reload();
  await alice.waitForFunction(() => window.app?.graph && !document.getElementById('splash-loader'), null, WAIT);
  const reopened = await alice.evaluate(async (path) => {
    const file = path.replace(/^workflows\//, '');
    const resp = await window.comfyAPI.api.api.getUserData(`workflows/${file}`);
    const data = await resp.json();
    await window.app.loadGraphData(data, true, true, file);
    return window.app.graph.nodes.map((n) => n.type).sort();
  }, savedPath);
  check(JSON.stringify(reopened) === JSON.stringify(['EmptyImage', 'SaveImage']), `the reopened workflow has ${reopened}`);
  await screenshot(alice, 'workspace-reopened');

  for (const [user, page] of [['alice', alice], ['bob', bob]]) {
    const errors = unexpected(page);
    check(errors.length === 0, `${user}'s console errors ComfyUI would not give: ${errors.join(' | ')}`);
  }
});

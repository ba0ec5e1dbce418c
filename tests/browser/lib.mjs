// Shared helpers of comfyume's real-browser tests: Debian's Chromium (headless) driven by playwright-core.
//
// The Rust side (tests/tests/support/browser.rs) starts the servers and runs a script with node, passing
// what the script needs in environment variables:
//   COMFYUME_URL        the server under test, e.g. http://127.0.0.1:40123
//   COMFYUME_ARTIFACTS  where screenshots and logs go (kept after the run)
//   CHROMIUM            the browser binary (default /usr/bin/chromium)
// A script exits 0 when every check held; on failure it prints why and exits 1 (see `run`).

import { chromium } from 'playwright-core';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** The flags this machine needs: no sandbox as root, no GPU, and no calls home (the network is closed). */
export const CHROMIUM_FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--no-first-run',
  '--disable-sync',
  '--disable-quic',
];

/** The server under test. */
export const URL = required('COMFYUME_URL');
/** Where screenshots go. */
export const ARTIFACTS = required('COMFYUME_ARTIFACTS');

function required(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set: run browser tests through cargo nextest (tests/tests/browser_*.rs)`);
  }
  return value;
}

/** Starts headless Chromium. */
export async function launch() {
  mkdirSync(ARTIFACTS, { recursive: true });
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_FLAGS,
  });
}

/**
 * A new page in a fresh context (its own cookies), recording console errors and failed requests so a
 * test can assert there were none it did not expect.
 */
export async function newPage(browser, options = {}) {
  const context = await browser.newContext({ viewport: { width: 1400, height: 900 }, ...options });
  const page = await context.newPage();
  page.consoleErrors = [];
  page.failedRequests = [];
  page.on('console', (msg) => {
    if (msg.type() === 'error') page.consoleErrors.push(`${msg.text()} [${msg.location()?.url || ''}]`);
  });
  page.on('pageerror', (err) => page.consoleErrors.push(`uncaught: ${err.message}`));
  page.on('requestfailed', (req) => page.failedRequests.push(`${req.method()} ${req.url()}: ${req.failure()?.errorText}`));
  return page;
}

/** Logs in through comfyume's login form, then lands on `next`. */
export async function login(page, user, password, next = '/') {
  await page.goto(`${URL}/login?next=${encodeURIComponent(next)}`);
  await page.fill('input[name=user]', user);
  await page.fill('input[name=password]', password);
  await Promise.all([page.waitForNavigation(), page.click('button[type=submit], input[type=submit]')]);
}

/** Saves a full-page screenshot as `<ARTIFACTS>/<name>.png` and returns its path. */
export async function screenshot(page, name) {
  const path = join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  return path;
}

/** Throws with `message` unless `condition` holds. */
export function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
}

/**
 * Runs a test body with a browser; prints `ok` or the failure (with a screenshot of every open page) and
 * sets the exit code the Rust side reads.
 */
export async function run(name, body) {
  const browser = await launch();
  try {
    await body(browser);
    console.log(`ok: ${name}`);
  } catch (err) {
    console.error(`FAILED: ${name}: ${err.stack || err}`);
    let i = 0;
    for (const context of browser.contexts()) {
      for (const page of context.pages()) {
        await page.screenshot({ path: join(ARTIFACTS, `${name}-failure-${i++}.png`), fullPage: true }).catch(() => {});
      }
    }
    writeFileSync(join(ARTIFACTS, `${name}-failure.txt`), String(err.stack || err));
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
}

// Figures for the workspace (run by workspace-figures.sh, which starts a real `comfyume serve`):
//   first load: navigation to /u/<user>/ until the graph is ready, in a fresh browser context each time
//               (nothing cached), N times; prints every load and the p50;
//   memory:     the server's resident set (VmRSS of SERVER_PID) idle, then with USERS browser contexts
//               each holding its user's workspace open (WebSocket connected).
// Env: COMFYUME_URL, COMFYUME_ARTIFACTS, SERVER_PID, USERS (count), LOADS (count); user i is `user<i>`
// with the password `password-user<i>`.
import { readFileSync } from 'node:fs';
import { URL, launch, newPage, login, screenshot } from './lib.mjs';

const pid = process.env.SERVER_PID;
const users = Number(process.env.USERS || 20);
const loads = Number(process.env.LOADS || 10);
const ready = () => window.app?.graph && document.querySelector('canvas') && !document.getElementById('splash-loader');
const status = (key) => readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').find((l) => l.startsWith(`${key}:`)).split(/\s+/)[1];
const rssMb = () => Number(status('VmRSS')) / 1024;
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

const browser = await launch();
try {
  // First loads: log in once per context (the cookie), then time the navigation alone.
  const times = [];
  for (let i = 0; i < loads; i++) {
    const page = await newPage(browser);
    await login(page, 'user1', 'password-user1', '/health');
    const start = performance.now();
    await page.goto(`${URL}/u/user1/`);
    await page.waitForFunction(ready, null, { timeout: 120_000, polling: 20 });
    times.push(performance.now() - start);
    await page.context().close();
  }
  console.log(`first_load_ms: ${times.map((t) => t.toFixed(0)).join(',')}`);
  console.log(`first_load_p50_ms: ${median(times).toFixed(0)}`);

  const idle = rssMb();
  const pages = [];
  for (let i = 1; i <= users; i++) {
    const page = await newPage(browser);
    await login(page, `user${i}`, `password-user${i}`, `/u/user${i}/`);
    await page.waitForFunction(ready, null, { timeout: 120_000 });
    pages.push(page);
  }
  await new Promise((r) => setTimeout(r, 2000));
  const open = rssMb();
  const threads = status('Threads');
  await screenshot(pages[pages.length - 1], 'figures-last-workspace');
  console.log(`server_rss_mb_idle: ${idle.toFixed(1)}`);
  console.log(`server_rss_mb_with_${users}_workspaces: ${open.toFixed(1)}`);
  console.log(`server_threads_with_${users}_workspaces: ${threads}`);
} finally {
  await browser.close();
}

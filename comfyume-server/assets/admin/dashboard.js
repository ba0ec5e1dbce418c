// comfyume admin page. No framework and no build step: the dashboard arrives whole over the WebSocket
// /api/v1/admin/live whenever it changes; actions go to the admin API with the session cookie.
'use strict';

const $ = (id) => document.getElementById(id);
const state = { dash: null, offset: 0, rendered: {}, socket: null, retry: 0 };

// ---------------------------------------------------------------- small helpers

/** An element with attributes (`class`, `data-*`, `title`, …; functions become listeners) and children. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith('data-') && typeof v === 'boolean') {
      el.setAttribute(k, String(v));
      continue;
    }
    if (v === null || v === undefined || v === false) continue;
    if (typeof v === 'function') el.addEventListener(k, v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const SVG = 'http://www.w3.org/2000/svg';
function s(tag, attrs, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

/** The server's clock now (waits are counted on it, not on this laptop's). */
const serverNow = () => Date.now() + state.offset;

/** 4 s, 2 m 05 s, 1 h 12 m. */
function duration(ms) {
  if (ms === null || ms === undefined) return '–';
  const sec = Math.max(0, Math.round(ms / 1000));
  if (sec < 60) return `${sec} s`;
  const min = Math.floor(sec / 60);
  if (min < 60) return `${min} m ${String(sec % 60).padStart(2, '0')} s`;
  return `${Math.floor(min / 60)} h ${String(min % 60).padStart(2, '0')} m`;
}

const clock = (ms) => new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
const hhmm = (ms) => new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', hour12: false });
const short = (id) => id.slice(0, 8);
const enc = encodeURIComponent;

function toast(text, error = false) {
  const t = $('toast');
  t.textContent = text;
  t.className = error ? 'show error' : 'show';
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.className = ''; }, error ? 6000 : 2500);
}

// ---------------------------------------------------------------- dialogs

/** Asks "are you sure?"; resolves true for yes. */
function confirmAction(text, yes) {
  const d = $('confirm');
  $('confirm-text').textContent = text;
  $('confirm-yes').textContent = yes;
  d.returnValue = 'no';
  d.showModal();
  $('confirm-no').focus();
  return new Promise((resolve) => d.addEventListener('close', () => resolve(d.returnValue === 'yes'), { once: true }));
}

/** Asks for values: fields are {name, label, value, type, placeholder}; resolves to {name: text} or null. */
function ask(text, fields) {
  const d = $('ask');
  $('ask-text').textContent = text;
  const box = $('ask-fields');
  box.replaceChildren(...fields.map((f) => h('label', {}, f.label,
    h('input', { name: f.name, value: f.value ?? '', type: f.type || 'text', placeholder: f.placeholder, step: 'any', autocomplete: 'off' }))));
  d.returnValue = 'no';
  d.showModal();
  box.querySelector('input')?.select();
  return new Promise((resolve) => d.addEventListener('close', () => {
    if (d.returnValue !== 'yes') return resolve(null);
    const out = {};
    for (const input of box.querySelectorAll('input')) out[input.name] = input.value.trim();
    resolve(out);
  }, { once: true }));
}

// ---------------------------------------------------------------- the API

/** Calls the admin API; shows the server's message when it refuses. Resolves to the JSON or null. */
async function api(method, path, body) {
  const init = { method, credentials: 'same-origin', headers: {} };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    toast(`the server did not answer: ${e.message}`, true);
    return null;
  }
  if (resp.status === 401) {
    location.href = '/login?next=/admin/';
    return null;
  }
  const json = await resp.json().catch(() => null);
  if (!resp.ok) {
    toast(json?.message || `the server answered ${resp.status}`, true);
    return null;
  }
  return json;
}

const actions = {
  async pauseQueue() {
    if (!(await confirmAction('Pause the whole queue? Running jobs finish; nothing new starts until you resume.', 'Pause queue'))) return;
    if (await api('POST', '/api/v1/admin/queue/pause')) toast('queue paused');
  },
  async resumeQueue() {
    if (await api('POST', '/api/v1/admin/queue/resume')) toast('queue resumed');
  },
  async policy(value) {
    if (await api('PUT', '/api/v1/admin/queue/policy', { policy: value })) toast(`policy: ${value.replace('_', ' ')}`);
    else if (state.dash) $('policy').value = state.dash.queue.policy;
  },
  async front(job) {
    if (await api('POST', `/api/v1/admin/jobs/${job.id}/front`)) toast(`${job.owner}'s job ${short(job.id)} runs next`);
  },
  async priority(job) {
    const v = await ask(`Priority of ${job.owner}'s job ${short(job.id)} (higher runs first under the priority policy)`,
      [{ name: 'priority', label: 'priority tier', value: job.priority, type: 'number' }]);
    if (!v) return;
    const priority = Number(v.priority);
    if (!Number.isInteger(priority)) return toast('the priority must be a whole number', true);
    if (await api('POST', `/api/v1/admin/jobs/${job.id}/priority`, { priority })) toast(`priority set to ${priority}`);
  },
  async cancel(job) {
    const what = job.state === 'queued' ? 'It has not started.' : 'It is running: its GPU work stops.';
    if (!(await confirmAction(`Cancel ${job.owner}'s job ${short(job.id)}? ${what}`, 'Cancel job'))) return;
    if (await api('POST', `/api/v1/jobs/${job.id}/cancel`)) toast(`job ${short(job.id)} cancelled`);
  },
  async pauseUser(u) {
    if (await api('POST', `/api/v1/admin/users/${enc(u.user)}/pause`)) toast(`${u.user} paused: their jobs wait`);
  },
  async resumeUser(u) {
    if (await api('POST', `/api/v1/admin/users/${enc(u.user)}/resume`)) toast(`${u.user} resumed`);
  },
  async limits(u) {
    const v = await ask(`Share and caps of ${u.user} (an empty cap: no limit)`, [
      { name: 'weight', label: 'fair-share weight (1 is normal, 2 gets twice the share)', value: u.weight, type: 'number' },
      { name: 'max_queued', label: 'most jobs waiting', value: u.max_queued ?? '', type: 'number', placeholder: 'no limit' },
      { name: 'max_running', label: 'most jobs running at once', value: u.max_running ?? '', type: 'number', placeholder: 'no limit' },
    ]);
    if (!v) return;
    const path = `/api/v1/admin/users/${enc(u.user)}`;
    if (Number(v.weight) !== u.weight && !(await api('PUT', `${path}/weight`, { weight: Number(v.weight) }))) return;
    const num = (t) => (t === '' ? null : Number(t));
    const caps = { max_queued: num(v.max_queued), max_running: num(v.max_running) };
    if (caps.max_queued !== (u.max_queued ?? null) || caps.max_running !== (u.max_running ?? null)) {
      if (!(await api('PUT', `${path}/caps`, caps))) return;
    }
    toast(`${u.user}: weight ${v.weight}, caps ${v.max_queued || '∞'} / ${v.max_running || '∞'}`);
  },
  async cancelUser(u) {
    const n = u.queued + u.running;
    if (!(await confirmAction(`Cancel all ${n} unfinished job(s) of ${u.user}? Running ones stop on their GPU.`, `Cancel ${u.user}'s jobs`))) return;
    const r = await api('POST', `/api/v1/admin/users/${enc(u.user)}/cancel`);
    if (r) toast(`${r.cancelled} cancelled, ${r.stopping} stopping`);
  },
  async drain(p) {
    if (!(await confirmAction(`Drain ${p.name}? Its ${p.in_flight} running job(s) finish; it takes no new ones until undrained.`, `Drain ${p.name}`))) return;
    if (await api('POST', `/api/v1/admin/providers/${enc(p.name)}/drain`)) toast(`${p.name} drains`);
  },
  async undrain(p) {
    if (await api('POST', `/api/v1/admin/providers/${enc(p.name)}/undrain`)) toast(`${p.name} takes jobs again`);
  },
  async move(p, by) {
    const names = state.dash.providers.map((x) => x.name);
    const i = names.indexOf(p.name);
    const j = i + by;
    if (j < 0 || j >= names.length) return;
    [names[i], names[j]] = [names[j], names[i]];
    if (await api('PUT', '/api/v1/admin/providers/order', { order: names })) toast(`order: ${names.join(' → ')}`);
  },
};

// ---------------------------------------------------------------- rendering

/** Re-renders one part only when its data changed (keeps focus and hover steady between snapshots). */
function part(name, data, render) {
  const key = JSON.stringify(data);
  if (state.rendered[name] === key) return;
  state.rendered[name] = key;
  render(data);
}

function render(d) {
  part('head', [d.queue, state.me], renderHead);
  part('jobs', d.jobs, renderJobs);
  part('users', [d.users, d.queue.policy], renderUsers);
  part('providers', d.providers, renderProviders);
  part('audit', d.audit, renderAudit);
  part('finished', d.jobs.finished, renderFinished);
  part('charts', [d.history, Math.floor(d.now / 60000)], renderCharts);
  part('tiles', [d.queue, d.users.map((u) => u.today?.submitted || 0)], renderTiles);
  tick();
}

function renderHead([q, me]) {
  const pill = $('queue-state');
  pill.textContent = q.paused ? 'QUEUE PAUSED' : 'QUEUE RUNNING';
  pill.className = `pill ${q.paused ? 'paused' : 'running'}`;
  const toggle = $('queue-toggle');
  toggle.textContent = q.paused ? 'Resume queue' : 'Pause queue';
  toggle.className = q.paused ? 'resume' : '';
  toggle.dataset.action = q.paused ? 'resume-queue' : 'pause-queue';
  $('policy').value = q.policy;
  $('who').textContent = me ? `logged in as ${me}` : '';
}

function renderTiles([q]) {
  $('t-waiting').textContent = q.waiting;
  $('t-running').textContent = q.running;
  $('t-slots').textContent = `${q.free_slots} / ${q.total_slots}`;
  $('t-slots').parentElement.classList.toggle('alert', q.total_slots === 0);
  $('t-median').textContent = q.median_run_ms === undefined ? '–' : duration(q.median_run_ms);
  $('t-today').textContent = state.dash.users.reduce((n, u) => n + (u.today?.submitted || 0), 0);
}

function stateBadge(job) {
  if (job.state === 'queued' && job.estimated_start?.status === 'held') return h('span', { class: 'badge b-held' }, 'held');
  return h('span', { class: `badge b-${job.state}` }, job.state === 'leased' ? 'starting' : job.state);
}

/** What happens next to a job, in a few words (the whole reason on hover). */
function nextCell(job) {
  if (job.state !== 'queued') return h('td', { class: 'dim next' }, job.provider ? `on ${job.provider}` : '');
  const e = job.estimated_start || {};
  let text = e.reason || '';
  if (e.status === 'estimated') text = e.wait_ms === 0 ? 'next free GPU' : `in ~${duration(e.wait_ms)}`;
  else if (/queue is paused/.test(text)) text = 'queue paused';
  else if (/user's jobs are paused/.test(text)) text = 'user paused';
  else if (/retry/.test(text)) text = 'retry soon';
  else if (/history/.test(text)) text = 'no estimate yet';
  else if (/no provider/.test(text)) text = 'no GPU available';
  return h('td', { class: 'dim next', title: e.reason || '' }, text);
}

/** Buttons at the end of a row. */
const acts = (...buttons) => h('td', { class: 'actions' }, h('div', { class: 'acts' }, ...buttons));

function renderJobs(list) {
  const body = $('jobs').tBodies[0];
  const previous = state.order || [];
  body.replaceChildren(...list.jobs.map((job) => {
    const queued = job.state === 'queued';
    const pos = queued ? (job.position === undefined ? '–' : job.position + 1) : '▶';
    const wasAt = previous.indexOf(job.id);
    const row = h('tr', { 'data-job': job.id, 'data-owner': job.owner, 'data-state': job.state, 'data-position': job.position ?? '' },
      h('td', { class: 'pos' }, pos),
      h('td', { class: 'id', title: job.id }, short(job.id)),
      h('td', { class: 'user' }, job.owner),
      h('td', {}, stateBadge(job), job.cancel_requested ? h('span', { class: 'why' }, 'stopping…') : null),
      h('td', { class: 'num', 'data-since': job.timings.created_at, 'data-until': job.timings.started_at ?? '' }, duration(job.timings.waited_ms)),
      h('td', { class: 'num', 'data-ran-since': job.timings.started_at ?? '' }, job.timings.ran_ms === undefined ? '–' : duration(job.timings.ran_ms)),
      nextCell(job),
      h('td', { class: 'num' }, job.priority),
      acts(
        queued ? h('button', { type: 'button', 'data-action': 'front', title: 'run this job next', click: () => actions.front(job) }, '⤒ front') : null,
        queued ? h('button', { type: 'button', 'data-action': 'priority', title: 'set the priority tier', click: () => actions.priority(job) }, 'prio') : null,
        job.cancel_requested ? null : h('button', { type: 'button', class: 'danger', 'data-action': 'cancel', click: () => actions.cancel(job) }, 'cancel')));
    if (queued && wasAt > (list.jobs.indexOf(job))) row.classList.add('moved');
    return row;
  }));
  state.order = list.jobs.map((j) => j.id);
  $('jobs-empty').hidden = list.jobs.length > 0;
  $('jobs').hidden = list.jobs.length === 0;
  $('jobs-more').textContent = list.more > 0 ? `…and ${list.more} more waiting` : '';
}

/** `×1 · 100 / ∞`: weight, most waiting / most running. */
function limitsText(u) {
  return `weight ${u.weight} · caps ${u.max_queued ?? '∞'} / ${u.max_running ?? '∞'}`;
}

function renderUsers([users]) {
  const body = $('users').tBodies[0];
  body.replaceChildren(...users.map((u) => {
    const t = u.today || {};
    return h('tr', { 'data-user': u.user, 'data-paused': u.paused },
      h('td', { class: 'user' }, u.user, ' ', u.paused ? h('span', { class: 'badge b-paused', title: 'their jobs wait until resumed' }, 'paused') : null,
        h('span', { class: 'why', title: 'fair-share weight · most waiting / most running' }, limitsText(u))),
      h('td', { class: 'num', title: `${u.queued} waiting, ${u.running} running` }, `${u.queued} / ${u.running}`),
      h('td', { class: 'num', title: `${t.succeeded || 0} succeeded, ${t.failed || 0} failed, ${t.cancelled || 0} cancelled` },
        t.submitted || 0, t.failed ? h('span', { class: 'why fail' }, `${t.failed} failed`) : null),
      h('td', { class: 'num' }, duration((t.gpu_seconds || 0) * 1000)),
      acts(
        u.paused
          ? h('button', { type: 'button', 'data-action': 'resume-user', click: () => actions.resumeUser(u) }, 'resume')
          : h('button', { type: 'button', 'data-action': 'pause-user', click: () => actions.pauseUser(u) }, 'pause'),
        h('button', { type: 'button', 'data-action': 'limits', title: 'fair-share weight and caps', click: () => actions.limits(u) }, 'limits'),
        h('button', { type: 'button', class: 'danger', 'data-action': 'cancel-user', disabled: u.queued + u.running === 0, click: () => actions.cancelUser(u) }, 'cancel all')));
  }));
}

function renderProviders(providers) {
  const body = $('providers').tBodies[0];
  body.replaceChildren(...providers.map((p, i) => {
    const used = p.slots ? Math.min(1, p.in_flight / p.slots) : 0;
    const bar = h('span', { class: 'bar' }, h('i'));
    bar.firstChild.style.width = `${Math.round(used * 100)}%`;
    return h('tr', { 'data-provider': p.name, 'data-draining': p.draining },
      h('td', { class: 'pos' }, i === 0 ? '1st' : `${i + 1}.`),
      h('td', { class: 'user' }, p.name),
      h('td', {},
        h('span', { class: `badge b-${p.health.status}` }, p.health.status),
        typeof p.warmth === 'string' ? h('span', { class: `badge b-${p.warmth}` }, ` ${p.warmth.replace('_', ' ')}`) : null,
        p.draining ? h('span', { class: 'badge b-draining' }, ' draining') : null,
        p.health.reason ? h('span', { class: 'why' }, p.health.reason) : null),
      h('td', { class: 'num' }, bar, `${p.in_flight} / ${p.slots}`),
      acts(
        h('button', { type: 'button', 'data-action': 'up', title: 'offer jobs to it earlier', disabled: i === 0, click: () => actions.move(p, -1) }, '↑'),
        h('button', { type: 'button', 'data-action': 'down', title: 'offer jobs to it later', disabled: i === providers.length - 1, click: () => actions.move(p, 1) }, '↓'),
        p.draining
          ? h('button', { type: 'button', 'data-action': 'undrain', click: () => actions.undrain(p) }, 'undrain')
          : h('button', { type: 'button', class: 'danger', 'data-action': 'drain', click: () => actions.drain(p) }, 'drain')));
  }));
}

function renderAudit(entries) {
  $('audit').replaceChildren(...entries.map((e) => h('li', { 'data-action': e.action },
    h('time', { datetime: new Date(e.at).toISOString() }, clock(e.at)),
    h('span', { class: 'admin' }, e.admin),
    h('span', {}, e.text))));
  $('audit-empty').hidden = entries.length > 0;
}

function renderFinished(list) {
  const jobs = [...list].sort((a, b) => (b.timings.finished_at || 0) - (a.timings.finished_at || 0));
  $('finished').tBodies[0].replaceChildren(...jobs.map((job) => {
    const why = job.failure ? `${job.failure.kind.replace('_', ' ')}: ${job.failure.message}` : job.cancel_reason || '';
    return h('tr', { 'data-job': job.id },
      h('td', { class: 'id', title: job.id }, short(job.id)),
      h('td', { class: 'user' }, job.owner),
      h('td', {}, h('span', { class: `badge b-${job.state}` }, job.state), why ? h('span', { class: 'why', title: why }, why.length > 60 ? `${why.slice(0, 60)}…` : why) : null),
      h('td', { class: 'num' }, duration(job.timings.waited_ms)),
      h('td', { class: 'num' }, duration(job.timings.ran_ms)),
      h('td', { class: 'num dim' }, job.timings.finished_at ? clock(job.timings.finished_at) : ''));
  }));
  $('finished').closest('section').hidden = jobs.length === 0;
}

/** A bar chart over the day: one bar per bucket, an optional line, time labels, the highest value. */
function chart(el, history, bars, line, unit) {
  const W = Math.max(300, Math.round(el.clientWidth || 600)), H = 130, left = 40, bottom = 18, top = 8;
  const n = history.buckets.length;
  const values = history.buckets.map(bars);
  const lineValues = line ? history.buckets.map(line) : [];
  const max = Math.max(1, ...values.filter((v) => v != null), ...lineValues.filter((v) => v != null));
  const x = (i) => left + ((W - left - 4) * i) / n;
  const y = (v) => H - bottom - ((H - bottom - top) * v) / max;
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img' });
  for (const f of [0, 0.5, 1]) {
    svg.append(s('line', { class: 'grid-line', x1: left, x2: W, y1: y(max * f), y2: y(max * f) }));
  }
  svg.append(s('text', { x: left - 4, y: y(max) + 4, 'text-anchor': 'end' }, unit(max)));
  svg.append(s('text', { x: left - 4, y: y(0), 'text-anchor': 'end' }, '0'));
  const bw = Math.max(1, x(1) - x(0) - 1);
  values.forEach((v, i) => {
    if (!v) return;
    svg.append(s('rect', { class: el.id === 'chart-depth' ? 'depth' : 'wmax', x: x(i), y: y(v), width: bw, height: Math.max(1, y(0) - y(v)) }));
  });
  if (line) {
    const pts = lineValues.map((v, i) => (v == null ? null : `${x(i) + bw / 2},${y(v)}`)).filter(Boolean);
    if (pts.length > 1) svg.append(s('polyline', { class: 'wmed', points: pts.join(' ') }));
    else if (pts.length === 1) {
      const [cx, cy] = pts[0].split(',');
      svg.append(s('circle', { cx, cy, r: 3, fill: '#b42318' }));
    }
  }
  const labels = [0, Math.floor(n / 2), n];
  for (const i of labels) {
    const t = history.since + i * history.bucket_ms;
    const anchor = i === 0 ? 'start' : i === n ? 'end' : 'middle';
    svg.append(s('text', { x: i === n ? W - 2 : x(i), y: H - 4, 'text-anchor': anchor }, hhmm(Math.min(t, history.until))));
  }
  if (!values.some((v) => v) && !lineValues.some((v) => v != null)) {
    svg.append(s('text', { class: 'none', x: (W + left) / 2, y: H / 2, 'text-anchor': 'middle' }, 'nothing yet today'));
  }
  const title = s('title', {}, `${el.id === 'chart-depth' ? 'jobs waiting' : 'wait'} per ${history.bucket_ms / 60000} min`);
  svg.prepend(title);
  el.replaceChildren(svg);
}

function renderCharts([history]) {
  $('chart-span').textContent = `since ${hhmm(history.since)}, per ${history.bucket_ms / 60000} min`;
  chart($('chart-depth'), history, (b) => b.waiting_max, null, (v) => String(Math.round(v)));
  chart($('chart-wait'), history, (b) => b.wait_max_ms ?? null, (b) => b.wait_median_ms ?? null, (v) => duration(v).replace(' 00 s', ''));
}

/** Updates the waits and run times every second between snapshots. */
function tick() {
  if (!state.dash) return;
  const now = serverNow();
  let longest = 0;
  for (const row of $('jobs').tBodies[0].rows) {
    const waited = row.cells[4];
    const since = Number(waited.dataset.since);
    const until = waited.dataset.until ? Number(waited.dataset.until) : now;
    waited.textContent = duration(until - since);
    if (!waited.dataset.until) longest = Math.max(longest, now - since);
    const ran = row.cells[5];
    if (ran.dataset.ranSince && row.dataset.state === 'running') ran.textContent = duration(now - Number(ran.dataset.ranSince));
  }
  $('t-longest').textContent = longest ? duration(longest) : '–';
  $('t-longest').parentElement.classList.toggle('alert', longest > 10 * 60 * 1000);
}

// ---------------------------------------------------------------- the live feed

function setConn(what, text) {
  const c = $('conn');
  c.dataset.state = what;
  c.textContent = text;
}

function connect() {
  const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/api/v1/admin/live`;
  const ws = new WebSocket(url);
  state.socket = ws;
  ws.onopen = () => { state.retry = 0; setConn('live', 'live'); };
  ws.onmessage = (m) => {
    const d = JSON.parse(m.data);
    if (d.type !== 'dashboard') return;
    state.offset = d.now - Date.now();
    state.dash = d;
    render(d);
    document.body.dataset.ready = 'true';
  };
  ws.onclose = async () => {
    setConn('lost', 'reconnecting…');
    // A session that ended sends the browser to the login form instead of retrying for ever.
    const me = await fetch('/api/v1/me', { credentials: 'same-origin' }).catch(() => null);
    if (me && me.status === 401) {
      location.href = '/login?next=/admin/';
      return;
    }
    state.retry = Math.min(state.retry + 1, 5);
    setTimeout(connect, 500 * 2 ** state.retry);
  };
}

async function start() {
  $('queue-toggle').addEventListener('click', () => (state.dash?.queue.paused ? actions.resumeQueue() : actions.pauseQueue()));
  $('policy').addEventListener('change', (e) => actions.policy(e.target.value));
  const me = await fetch('/api/v1/me', { credentials: 'same-origin' }).then((r) => (r.ok ? r.json() : null)).catch(() => null);
  state.me = me?.user;
  connect();
  setInterval(tick, 1000);
}

start();

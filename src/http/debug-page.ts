import { createHash } from 'node:crypto';

/**
 * The inspector's one page: counts by state, a table of jobs, one job's
 * timeline, kept live by `/debug/events`. Plain HTML, CSS and script in one
 * string: no build step, nothing fetched from elsewhere at run time. Data is
 * put in the page with `textContent` only, never parsed as HTML, since job
 * fields (errors, subjects) come from outside.
 */

const STYLE = `
:root {
  --bg: #f6f7f9; --panel: #fff; --ink: #1f2933; --muted: #616e7c; --line: #e4e7eb;
  --pending: #52606d; --dispatched: #2563eb; --awaiting-ack: #7c3aed; --failed: #dc2626;
  --retrying: #d97706; --succeeded: #15803d; --dead: #991b1b; --cancelled: #9aa5b1;
}
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, sans-serif; background: var(--bg); color: var(--ink); }
header { display: flex; align-items: baseline; gap: 16px; padding: 12px 20px;
  background: var(--panel); border-bottom: 1px solid var(--line); }
header h1 { margin: 0; font-size: 17px; }
header .meta { color: var(--muted); font-size: 12px; }
#status { margin-left: auto; font-size: 12px; }
#status::before { content: ""; display: inline-block; width: 8px; height: 8px;
  border-radius: 50%; margin-right: 6px; background: var(--failed); }
#status.live::before { background: var(--succeeded); }
#counts { display: grid; grid-template-columns: repeat(8, minmax(100px, 1fr)); gap: 10px;
  padding: 14px 20px 4px; }
.card { background: var(--panel); border: 1px solid var(--line); border-radius: 6px;
  padding: 8px 10px; border-top: 4px solid var(--c, var(--muted)); }
.card .name { font-size: 12px; color: var(--muted); }
.card .live { font-size: 24px; font-weight: 600; }
.card .stored { font-size: 11px; color: var(--muted); }
main { display: grid; grid-template-columns: minmax(0, 3fr) minmax(320px, 2fr); gap: 14px;
  padding: 10px 20px 20px; }
section, aside > div { background: var(--panel); border: 1px solid var(--line);
  border-radius: 6px; padding: 10px 12px; }
aside { display: flex; flex-direction: column; gap: 14px; min-width: 0; }
h2 { margin: 0 0 8px; font-size: 14px; }
h2 small { font-weight: normal; color: var(--muted); }
input { width: 100%; padding: 6px 8px; border: 1px solid var(--line); border-radius: 4px;
  margin-bottom: 8px; font: inherit; }
table { width: 100%; border-collapse: collapse; font-size: 13px; }
th { text-align: left; color: var(--muted); font-weight: 500; border-bottom: 1px solid var(--line);
  padding: 4px 6px; }
td { padding: 4px 6px; border-bottom: 1px solid var(--line); white-space: nowrap; }
tbody tr { cursor: pointer; }
tbody tr:hover, tbody tr.selected { background: #eef2ff; }
.id { font-family: ui-monospace, monospace; font-size: 12px; }
.badge { display: inline-block; padding: 0 7px; border-radius: 9px; color: #fff;
  font-size: 12px; background: var(--c, var(--muted)); }
.muted { color: var(--muted); }
.empty { color: var(--muted); padding: 8px 0; }
ol { list-style: none; margin: 0; padding: 0; font-size: 13px; }
ol li { padding: 3px 0; border-bottom: 1px solid var(--line); }
#timeline dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 10px;
  margin: 0 0 10px; font-size: 13px; }
#timeline dt { color: var(--muted); }
#timeline dd { margin: 0; overflow-wrap: anywhere; }
.step { display: grid; grid-template-columns: 92px 1fr; gap: 8px; padding: 5px 0;
  border-bottom: 1px solid var(--line); }
.step .detail { font-family: ui-monospace, monospace; font-size: 11px; color: var(--muted);
  overflow-wrap: anywhere; }
pre { font-size: 11px; max-height: 240px; overflow: auto; background: var(--bg); padding: 6px; }
`;

const SCRIPT = `
'use strict';
const STATES = ['pending', 'dispatched', 'awaiting-ack', 'failed', 'retrying',
  'succeeded', 'dead', 'cancelled'];
const FINAL = new Set(['succeeded', 'dead', 'cancelled']);
const TABLE_ROWS = 200;
const FEED_ROWS = 50;
/** The stream carries every change, creations included; this poll is only a safety net. */
const REFRESH_MS = 15000;
/** Counts follow a burst of transitions after this delay, one request per burst. */
const SOON_MS = 300;
/** Transition ids remembered, so one sent again after a reconnect is applied once. */
const APPLIED_MAX = 5000;
const token = new URLSearchParams(location.search).get('token');
const jobs = new Map();
const feed = [];
let selected = null;
let timeline = null;
let filterText = '';
let refreshTimer = null;
let refreshSoonPending = false;
let refreshing = false;
let refreshAgain = false;
const applied = new Set();
let timelineTimer = null;
let lastView = null;
/** Jobs seen finishing on the stream, for the finished counts between two table counts. */
const finishedSince = new Map();

/** A path of this service, with the page's token passed on (EventSource cannot send headers). */
function url(path, params) {
  const u = new URL(path, location.href);
  for (const [k, v] of Object.entries(params || {})) u.searchParams.set(k, v);
  if (token) u.searchParams.set('token', token);
  return u.pathname + u.search;
}

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === null || v === undefined) continue;
    if (k === 'style') node.style.cssText = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

function badge(state) {
  return el('span', { class: 'badge', style: '--c: var(--' + state + ')', 'data-state': state },
    state);
}

function clock(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return d.toLocaleTimeString([], { hour12: false }) + '.' +
    String(d.getMilliseconds()).padStart(3, '0');
}

function relative(iso) {
  if (!iso) return '';
  const ms = Date.parse(iso) - Date.now();
  const s = Math.abs(ms) / 1000;
  const text = s < 60 ? s.toFixed(s < 10 ? 1 : 0) + ' s' : s < 3600 ? Math.round(s / 60) +
    ' min' : s < 86400 ? (s / 3600).toFixed(1) + ' h' : (s / 86400).toFixed(1) + ' d';
  return ms >= 0 ? 'in ' + text : text + ' ago';
}

async function getJson(path, params) {
  const response = await fetch(url(path, params), { headers: { accept: 'application/json' } });
  const body = await response.json();
  if (!response.ok) throw new Error((body.error && body.error.message) || response.statusText);
  return body;
}

function setStatus(text, live) {
  const status = document.getElementById('status');
  status.textContent = text;
  status.className = live ? 'live' : '';
}

async function refresh() {
  clearTimeout(refreshTimer);
  refreshTimer = null;
  refreshSoonPending = false;
  if (refreshing) {
    refreshAgain = true;
    return;
  }
  refreshing = true;
  try {
    const view = await getJson('/debug/jobs', { limit: String(TABLE_ROWS) });
    lastView = view;
    const counted = view.stored_counted_at ? Date.parse(view.stored_counted_at) : null;
    for (const [id, f] of finishedSince) {
      if (counted !== null && Date.parse(f.at) <= counted) finishedSince.delete(id);
    }
    renderCounts();
    renderWakeUps(view);
    const seen = new Set();
    for (const j of view.jobs) {
      seen.add(j.job_id);
      const known = jobs.get(j.job_id);
      jobs.set(j.job_id, { ...known, ...j, live: true, changed: known ? known.changed : null });
    }
    for (const [id, j] of jobs) if (!seen.has(id)) j.live = false;
    document.getElementById('updated').textContent = 'updated ' + clock(view.now);
    renderJobs();
  } catch (err) {
    document.getElementById('updated').textContent = 'refresh failed: ' + err.message;
  }
  refreshing = false;
  // A transition that came while this read was under way may be missing from it.
  refreshSoonPending = refreshAgain;
  refreshTimer = setTimeout(refresh, refreshAgain ? SOON_MS : REFRESH_MS);
  refreshAgain = false;
}

/**
 * Counts and wake-ups follow transitions shortly: the first of a burst plans
 * one read, and the rest of the burst does not push it back.
 */
function refreshSoon() {
  if (refreshing) {
    refreshAgain = true;
    return;
  }
  if (refreshSoonPending) return;
  clearTimeout(refreshTimer);
  refreshSoonPending = true;
  refreshTimer = setTimeout(refresh, SOON_MS);
}

/**
 * Waiting states count live actors. Finished jobs have none: their cards count
 * the table (counted now and then, see stored_counted_at) plus the jobs seen
 * finishing on the stream since.
 */
function renderCounts() {
  const view = lastView;
  if (!view) return;
  const counted = view.stored_counted_at ? Date.parse(view.stored_counted_at) : null;
  const since = {};
  for (const f of finishedSince.values()) {
    if (counted === null || Date.parse(f.at) > counted) since[f.state] = (since[f.state] || 0) + 1;
  }
  const box = document.getElementById('counts');
  box.replaceChildren(...view.states.map((s) => {
    const final = FINAL.has(s.state);
    const number = final ? (s.stored || 0) + (since[s.state] || 0) : s.count;
    const note = final
      ? (counted === null ? 'seen finishing here' : 'in the database')
      : (s.stored === null ? 'live' : 'live · ' + s.stored + ' stored') +
        (s.oldest_waiting ? ' · oldest due ' + relative(s.oldest_waiting.due_at) : '');
    return el('div',
      { class: 'card', style: '--c: var(--' + s.state + ')', id: 'count-' + s.state },
      el('div', { class: 'name' }, s.state),
      el('div', { class: 'live', title: final ? 'finished jobs' : 'live actors' }, number),
      el('div', { class: 'stored' }, note));
  }));
}

function renderWakeUps(view) {
  const list = document.getElementById('wakeups');
  const items = view.wake_ups.map((w) => el('li', null, el('span', { title: w.at },
    relative(w.at)), ' ', badge(w.state), ' ', w.event, ' ',
    el('a', { href: '#job=' + w.job_id, class: 'id' }, w.job_id.slice(0, 8)), ' ', w.job_type));
  for (const w of view.service_wake_ups) {
    if (w.at) items.push(el('li', null, relative(w.at), ' ', w.name));
  }
  list.replaceChildren(...(items.length ? items : [el('li', { class: 'empty' }, 'nothing')]));
}

function renderJobs() {
  const rows = [...jobs.values()]
    .filter((j) => !filterText || [j.job_id, j.job_type, j.state, j.subject || '']
      .some((v) => v.toLowerCase().includes(filterText)))
    .sort((a, b) => (b.changed || '').localeCompare(a.changed || '') ||
      (a.next_at || '').localeCompare(b.next_at || ''))
    .slice(0, TABLE_ROWS);
  const body = document.querySelector('#jobs tbody');
  body.replaceChildren(...rows.map((j) => el('tr', {
    'data-job-id': j.job_id,
    class: j.job_id === selected ? 'selected' : null,
    onclick: () => { location.hash = 'job=' + j.job_id; },
  },
  el('td', { class: 'id', title: j.job_id }, j.job_id.slice(0, 8)),
  el('td', null, j.job_type),
  el('td', { class: 'state' }, badge(j.state)),
  el('td', null, j.attempt),
  el('td', { title: j.next_at || '' }, j.next_at ? relative(j.next_at) : ''),
  el('td', { class: 'muted', title: j.changed || '' }, j.changed ? relative(j.changed) : ''))));
  if (rows.length === 0) {
    body.replaceChildren(el('tr', null, el('td', { colspan: '6', class: 'empty' }, 'no jobs')));
  }
  document.getElementById('job-count').textContent = rows.length + ' shown';
}

function renderFeed() {
  document.getElementById('feed').replaceChildren(...feed.map((t) => el('li', null,
    el('span', { class: 'muted' }, clock(t.at)), ' ',
    el('a', { href: '#job=' + t.job_id, class: 'id' }, t.job_id.slice(0, 8)), ' ',
    t.from ? badge(t.from) : '', ' → ', badge(t.to), ' ', el('span', { class: 'muted' },
      t.event))));
}

function step(t) {
  return el('div', { class: 'step', 'data-transition-id': t.id },
    el('div', { class: 'muted', title: t.at }, clock(t.at)),
    el('div', null, t.from ? badge(t.from) : el('span', { class: 'muted' }, 'new'), ' → ',
      badge(t.to), ' ', t.event, ' ', el('span', { class: 'muted' }, 'attempt ' + t.attempt),
      t.detail ? el('div', { class: 'detail' }, JSON.stringify(t.detail)) : null));
}

function renderTimeline() {
  const box = document.getElementById('timeline');
  if (!selected) {
    box.replaceChildren(el('h2', null, 'Timeline'),
      el('p', { class: 'empty' }, 'Select a job to see its history.'));
    return;
  }
  if (!timeline) {
    box.replaceChildren(el('h2', null, 'Timeline'), el('p', { class: 'empty' }, 'loading…'));
    return;
  }
  if (timeline.error) {
    box.replaceChildren(el('h2', null, 'Timeline'), el('p', { class: 'empty' }, timeline.error));
    return;
  }
  const j = timeline.job;
  const fields = [['job', j.job_id], ['type', j.job_type], ['attempt', j.attempt + ' of ' +
    j.max_attempts], ['scheduled for', j.scheduled_for], ['next at', j.next_at],
    ['subject', j.subject], ['last error', j.last_error], ['finished at', j.finished_at],
    ['actor', timeline.live ? 'live' : 'not live (' + timeline.snapshot_source + ' snapshot)']];
  box.replaceChildren(
    el('h2', null, 'Timeline ', badge(j.state)),
    el('dl', null, ...fields.filter(([, v]) => v !== null && v !== undefined && v !== '')
      .flatMap(([k, v]) => [el('dt', null, k), el('dd', null, v)])),
    el('div', { id: 'steps' }, ...timeline.transitions.map(step)),
    el('details', null, el('summary', null, 'snapshot'),
      el('pre', null, JSON.stringify(timeline.snapshot, null, 2))));
}

function select(id) {
  selected = id;
  timeline = null;
  renderTimeline();
  renderJobs();
  if (id) reloadTimeline(id);
}

async function reloadTimeline(id) {
  try {
    const view = await getJson('/debug/jobs/' + encodeURIComponent(id));
    if (selected !== id) return;
    timeline = view;
    const known = jobs.get(id);
    jobs.set(id, { ...known, job_id: id, job_type: view.job.job_type, state: view.job.state,
      attempt: view.job.attempt, next_at: view.job.next_at, subject: view.job.subject,
      live: view.live, changed: known ? known.changed : view.job.updated_at });
    renderJobs();
  } catch (err) {
    if (selected === id) timeline = { error: err.message };
  }
  renderTimeline();
}

function onTransition(t) {
  if (applied.has(t.id)) return;
  applied.add(t.id);
  if (applied.size > APPLIED_MAX) applied.delete(applied.values().next().value);
  const known = jobs.get(t.job_id) || { job_id: t.job_id, job_type: t.job_type };
  jobs.set(t.job_id, { ...known, state: t.to, attempt: t.attempt, changed: t.at,
    next_at: FINAL.has(t.to) ? null : known.next_at });
  feed.unshift(t);
  feed.length = Math.min(feed.length, FEED_ROWS);
  if (selected === t.job_id && timeline && !timeline.error &&
      !timeline.transitions.some((x) => x.id === t.id)) {
    timeline.transitions.push(t);
    timeline.job = { ...timeline.job, state: t.to, attempt: t.attempt };
    renderTimeline();
    // The rest of the view (next instant, result, snapshot) is read again shortly.
    clearTimeout(timelineTimer);
    timelineTimer = setTimeout(() => { if (selected === t.job_id) reloadTimeline(t.job_id); },
      300);
  }
  if (FINAL.has(t.to)) {
    finishedSince.set(t.job_id, { state: t.to, at: t.at });
    renderCounts();
  }
  renderJobs();
  renderFeed();
  refreshSoon();
}

let lastEventId = null;
let reconnectMs = 1000;

function connect() {
  // EventSource reconnects by itself and sends Last-Event-ID (the stream's
  // resume point), so nothing is missed; what was missed comes first. It gives
  // up for good on a reply that is not 200 (503 while the service restarts):
  // then open a new one, passing the resume point as a parameter.
  const params = lastEventId ? { last_event_id: lastEventId } : {};
  const source = new EventSource(url('/debug/events', params));
  source.addEventListener('open', () => {
    reconnectMs = 1000;
    setStatus('live', true);
    refreshSoon();
  });
  source.addEventListener('error', () => {
    setStatus('reconnecting…', false);
    if (source.readyState !== EventSource.CLOSED) return;
    setTimeout(connect, reconnectMs);
    reconnectMs = Math.min(reconnectMs * 2, 30000);
  });
  source.addEventListener('transition', (e) => {
    if (e.lastEventId) lastEventId = e.lastEventId;
    onTransition(JSON.parse(e.data));
  });
}

function fromHash() {
  const m = /^#job=([0-9a-fA-F-]{36})$/.exec(location.hash);
  select(m ? m[1].toLowerCase() : null);
}

document.getElementById('filter').addEventListener('input', (e) => {
  filterText = e.target.value.trim().toLowerCase();
  renderJobs();
});
window.addEventListener('hashchange', fromHash);
setInterval(renderJobs, 1000);
connect();
refresh();
fromHash();
`;

const BODY = `
<header>
  <h1>QuanTutor scheduler · state inspector</h1>
  <span class="meta" id="updated"></span>
  <span id="status">connecting…</span>
</header>
<div id="counts"></div>
<main>
  <section>
    <h2>Jobs <small id="job-count"></small></h2>
    <input id="filter" autocomplete="off"
      placeholder="Filter by job id, job type, state or subject">
    <table id="jobs">
      <thead><tr><th>job</th><th>job type</th><th>state</th><th>attempt</th>
        <th>next wake-up</th><th>last change</th></tr></thead>
      <tbody></tbody>
    </table>
  </section>
  <aside>
    <div id="timeline"></div>
    <div><h2>Next wake-ups</h2><ol id="wakeups"></ol></div>
    <div><h2>Recent transitions</h2><ol id="feed"></ol></div>
  </aside>
</main>
`;

const sha256 = (text: string) => `'sha256-${createHash('sha256').update(text).digest('base64')}'`;

export const DEBUG_PAGE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Scheduler inspector</title>
<link rel="icon" href="data:,">
<style>${STYLE}</style>
</head>
<body>${BODY}<script>${SCRIPT}</script>
</body>
</html>
`;

/** Only this page's own style and script run, and it talks only to this service. */
export const DEBUG_PAGE_CSP = [
  "default-src 'none'",
  `script-src ${sha256(SCRIPT)}`,
  `style-src ${sha256(STYLE)}`,
  "connect-src 'self'",
  "img-src 'self' data:",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

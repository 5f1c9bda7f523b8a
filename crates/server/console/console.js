// keygate console: manage one owner's API keys through keygate's own HTTP API.
//
// The page holds no authority of its own: every call carries the key its user signed in
// with (X-Blnk-Key), kept in memory and in this tab's sessionStorage only. Everything the
// API returns is put on the page with textContent or as elements made one by one, never
// parsed as markup, and nothing here needs inline script or style, so it runs under a
// strict Content-Security-Policy (Trusted Types included: no HTML string reaches a sink).
'use strict';

(() => {
  const KEY_STORAGE = 'keygate.console.key';
  const OWNER_STORAGE = 'keygate.console.owner';
  const NEVER = '0001-01-01T00:00:00Z';
  const HOUR_MS = 3600 * 1000;
  const DAY_MS = 24 * HOUR_MS;
  const SVG_NS = 'http://www.w3.org/2000/svg';
  // How long a request may take before the page gives up on it.
  const TIMEOUT_MS = 15000;
  const TIMEOUT_TEXT = 'keygate did not answer within 15 s';
  // A refusal of the key itself: the session it signed in is over.
  const SESSION_OVER = new Set(['AUTH_INVALID_API_KEY', 'AUTH_EXPIRED_API_KEY']);

  // The scope catalogue (crates/core/src/scope.rs). The server stays the judge: a scope
  // typed by hand is sent as typed, since a deployment may add resources of its own.
  const RESOURCES = ['*', 'ledgers', 'balances', 'accounts', 'identities', 'transactions',
    'balance-monitors', 'hooks', 'api-keys', 'search', 'reconciliation', 'metadata',
    'backup', 'verify'];
  const ACTIONS = ['read', 'write', 'delete', '*'];
  const WINDOW_NAMES = new Map([[1000, 'second'], [60000, 'minute'], [3600000, 'hour'],
    [86400000, 'day']]);
  const ROW_ACTIONS = { edit: 'Edit', rotate: 'Rotate', revoke: 'Revoke', events: 'Events',
    usage: 'Usage' };
  const FIELD_NAMES = { name: 'Name', scopes: 'Scopes', expires_at: 'Expires',
    ratelimit: 'Rate limit', credits: 'Credits' };
  // What a rotation may leave the old key (seconds, up to the server's one day), and the
  // choice a rotation dialog opens with: long enough to move a client to the new secret.
  // A leaked secret wants None.
  const GRACE_PERIODS = [[0, 'None — stops at once'], [300, '5 minutes'], [3600, '1 hour'],
    [86400, '1 day']];
  const DEFAULT_GRACE = 3600;

  const state = {
    key: null, // the signed-in key; never logged, never put in the markup or the URL
    master: false,
    owner: '', // the owner whose keys are shown (or being loaded)
    keys: [],
    list: { request: 0 },
    events: { key: null, list: [], newestFirst: true, request: 0 },
    usage: { key: null, range: 'hour', request: 0 },
  };

  const $ = (id) => document.getElementById(id);

  // ---- Small DOM helpers: elements from data, always as text ----

  function el(tag, options = {}, children = []) {
    const node = document.createElement(tag);
    if (options.className) node.className = options.className;
    if (options.text !== undefined) node.textContent = String(options.text);
    for (const [name, value] of Object.entries(options.attrs || {})) {
      node.setAttribute(name, value);
    }
    node.append(...children);
    return node;
  }

  function svg(tag, attrs = {}, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  // Text from outside (a name, an owner, an id) inside a sentence: isolated, so that
  // right-to-left or bidi control characters in it cannot reorder the words around it.
  function bdi(text) {
    return el('bdi', { text: text === undefined || text === null ? '' : text });
  }

  // Parts of a sentence (strings and nodes) as fresh nodes, and as plain text.
  const partsOf = (content) => (Array.isArray(content) ? content : [content])
    .filter((part) => part !== undefined && part !== null && part !== '');
  const textOf = (content) => partsOf(content)
    .map((part) => (typeof part === 'string' ? part : part.textContent)).join('');

  // ---- Feedback: #status for progress and outcomes, #error for what went wrong ----

  class ApiError extends Error {
    constructor(status, message, code, details) {
      super(message);
      this.name = 'ApiError';
      this.status = status;
      this.code = code;
      this.details = details;
    }
  }

  // A failure with a sentence of its own: the network, or a field the page checks itself.
  class PlainError extends Error {
    constructor(message, field) {
      super(textOf(message));
      this.parts = message;
      this.field = field || null; // the control it is about, if any
    }
  }

  // An answer nobody waits for any more (signed out, another owner, a newer request):
  // dropped without a word.
  class Stale extends Error {}

  // A failure already shown where it belongs (in its form): nothing more to say.
  class Shown extends Error {}

  function describe(error) {
    if (error instanceof ApiError) {
      return error.code ? `${error.message} (${error.code})` : error.message;
    }
    if (error instanceof PlainError) return error.parts;
    const text = error && error.message ? error.message : String(error);
    return `The console failed: ${text}`;
  }

  // Sets a live region's text. The same words again are cleared first and set on the
  // next frame, so a screen reader announces a repeated outcome or error again.
  const announcing = new WeakMap();
  function announce(node, content) {
    const parts = partsOf(content);
    const text = textOf(parts);
    const turn = (announcing.get(node) || 0) + 1;
    announcing.set(node, turn);
    if (text && text === node.textContent) {
      node.replaceChildren();
      nextFrame(() => {
        if (announcing.get(node) === turn) node.replaceChildren(...parts);
      });
    } else {
      node.replaceChildren(...parts);
    }
  }

  // Runs `then` on the next frame, or soon if frames are not drawn (a hidden tab).
  function nextFrame(then) {
    let done = false;
    const once = () => {
      if (!done) {
        done = true;
        then();
      }
    };
    requestAnimationFrame(once);
    setTimeout(once, 100);
  }

  function setStatus(content) {
    announce($('status'), content);
  }

  function showError(error) {
    announce($('error'), describe(error));
  }

  function clearError() {
    announce($('error'), '');
  }

  // ---- Fields in error: aria-invalid, and described by the message that says why ----

  function markInvalid(input, messageId) {
    if (!input) return;
    input.setAttribute('aria-invalid', 'true');
    const ids = (input.getAttribute('aria-describedby') || '').split(/\s+/).filter(Boolean);
    if (!ids.includes(messageId)) input.setAttribute('aria-describedby', [...ids, messageId].join(' '));
    input.dataset.invalidBy = messageId;
  }

  function markValid(input) {
    if (!input || !input.dataset.invalidBy) return;
    const messageId = input.dataset.invalidBy;
    delete input.dataset.invalidBy;
    input.removeAttribute('aria-invalid');
    const ids = (input.getAttribute('aria-describedby') || '').split(/\s+/)
      .filter((id) => id && id !== messageId);
    if (ids.length) input.setAttribute('aria-describedby', ids.join(' '));
    else input.removeAttribute('aria-describedby');
  }

  function markAllValid(scope) {
    for (const input of scope.querySelectorAll('[data-invalid-by]')) markValid(input);
  }

  function report(error) {
    if (error instanceof Stale || error instanceof Shown) return;
    showError(error);
    setStatus('');
    if (error instanceof PlainError && error.field && error.field.isConnected) {
      markInvalid(error.field, 'error');
      error.field.focus();
    }
  }

  // Runs a handler, sync or async, and shows whatever it throws or rejects with.
  function run(handler) {
    try {
      Promise.resolve(handler()).catch(report);
    } catch (error) {
      report(error);
    }
  }

  function on(target, type, handler) {
    target.addEventListener(type, (event) => {
      // Forms never submit anywhere: the page does the work itself.
      if (type === 'submit') event.preventDefault();
      run(() => handler(event));
    });
  }

  // One run at a time per kind of work and target: a double click sends one request, but
  // work for another target (owner B while A loads, the events of another key) goes
  // ahead, and the newest answer is the one drawn.
  const pending = new Map();
  async function once(kind, target, work) {
    const running = pending.get(kind);
    if (running && running.target === target) return undefined;
    const mine = { target };
    pending.set(kind, mine);
    try {
      return await work();
    } finally {
      if (pending.get(kind) === mine) pending.delete(kind);
    }
  }

  // Marks an element busy while `work` runs: aria-busy, and for a button aria-disabled
  // (it keeps the focus, and its handler drops the repeat).
  const busyCount = new WeakMap();
  function setBusy(element, busy) {
    if (!element) return;
    const count = Math.max(0, (busyCount.get(element) || 0) + (busy ? 1 : -1));
    busyCount.set(element, count);
    element.setAttribute('aria-busy', String(count > 0));
    if (element.tagName === 'BUTTON') {
      if (count > 0) element.setAttribute('aria-disabled', 'true');
      else element.removeAttribute('aria-disabled');
    }
  }

  async function whileBusy(element, work) {
    setBusy(element, true);
    try {
      return await work();
    } finally {
      setBusy(element, false);
    }
  }

  // ---- Epochs: which session and owner an answer belongs to ----

  // A sign-in, a sign-out and a change of owner each start a new epoch; an answer asked
  // for in an older one is dropped, and signing out aborts every request in flight.
  const epoch = {
    session: 0,
    owner: 0,
    sessionAbort: new AbortController(),
    ownerAbort: new AbortController(),
  };

  function newOwnerEpoch() {
    epoch.owner += 1;
    epoch.ownerAbort.abort();
    epoch.ownerAbort = new AbortController();
  }

  function newSessionEpoch() {
    epoch.session += 1;
    epoch.sessionAbort.abort();
    epoch.sessionAbort = new AbortController();
    newOwnerEpoch();
  }

  // What a piece of work belongs to: the session alone (a change made, whose answer
  // matters while signed in, such as a new secret) or the session and the owner shown.
  function ticket(scope = 'owner') {
    return {
      scope,
      session: epoch.session,
      owner: epoch.owner,
      signal: scope === 'owner' ? epoch.ownerAbort.signal : epoch.sessionAbort.signal,
    };
  }

  function current(t) {
    return t.session === epoch.session && (t.scope !== 'owner' || t.owner === epoch.owner);
  }

  // Throws Stale unless `t` is still current: after every await.
  function keep(t) {
    if (!current(t)) throw new Stale('superseded');
  }

  // ---- Storage: sessionStorage only (a tab's own, gone when it closes) ----

  function stored(name) {
    try {
      return sessionStorage.getItem(name) || '';
    } catch {
      return '';
    }
  }

  function store(name, value) {
    try {
      if (value) sessionStorage.setItem(name, value);
      else sessionStorage.removeItem(name);
    } catch {
      // Storage refused (a private mode): the key then lives in memory alone.
    }
  }

  // ---- The API ----

  function query(params) {
    const parts = Object.entries(params)
      .filter(([, value]) => value !== undefined && value !== null && value !== '')
      .map(([name, value]) => `${encodeURIComponent(name)}=${encodeURIComponent(value)}`);
    return parts.length ? `?${parts.join('&')}` : '';
  }

  // The path of a key's endpoint, with its owner (required for the master key).
  function keyUrl(key, suffix = '', params = {}) {
    const owner = key.owner_id || state.owner;
    return `/api-keys/${encodeURIComponent(key.api_key_id)}${suffix}${query({ owner, ...params })}`;
  }

  function timeoutSignal(ms) {
    if (typeof AbortSignal.timeout === 'function') return AbortSignal.timeout(ms);
    const controller = new AbortController();
    setTimeout(() => controller.abort(new DOMException('timed out', 'TimeoutError')), ms);
    return controller.signal;
  }

  // AbortSignal.any, or the same made by hand where a browser lacks it.
  function anySignal(signals) {
    if (typeof AbortSignal.any === 'function') return AbortSignal.any(signals);
    const controller = new AbortController();
    for (const signal of signals) {
      if (signal.aborted) {
        controller.abort(signal.reason);
        break;
      }
      signal.addEventListener('abort', () => controller.abort(signal.reason), { once: true });
    }
    return controller.signal;
  }

  // One request, for the epoch `t` names: its answer, or Stale once that epoch is over.
  async function api(method, url, { body, t = ticket(), key = state.key } = {}) {
    const headers = { Accept: 'application/json', 'X-Blnk-Key': key || '' };
    const timeout = timeoutSignal(TIMEOUT_MS);
    const init = {
      method,
      headers,
      cache: 'no-store',
      credentials: 'omit',
      signal: anySignal([t.signal, timeout]),
    };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let response;
    let text;
    try {
      keep(t);
      response = await fetch(url, init);
      text = await response.text();
    } catch (cause) {
      if (cause instanceof Stale || t.signal.aborted || !current(t)) throw new Stale('aborted');
      if (timeout.aborted) throw new PlainError(TIMEOUT_TEXT);
      const why = cause && cause.message ? cause.message : String(cause);
      throw new PlainError(`Could not reach keygate: the network request failed (${why}).`);
    }
    keep(t);
    let data = null;
    let parsed = true;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        parsed = false;
      }
    }
    if (response.ok) {
      if (!parsed) {
        throw new PlainError(`keygate answered HTTP ${response.status} with no JSON.`);
      }
      return data;
    }
    const detail = (parsed && data && data.error_detail) || {};
    const message = (parsed && data && data.error) || detail.message
      || `keygate answered HTTP ${response.status} ${response.statusText}`.trim();
    const error = new ApiError(response.status, message, detail.code || '', detail.details);
    // The signed-in key refused mid-session (revoked, expired, its grace period over).
    if (response.status === 401 && SESSION_OVER.has(error.code) && key && key === state.key) {
      sessionOver(error);
      throw new Stale('signed out');
    }
    throw error;
  }

  // ---- Formatting ----

  const pad = (n) => String(n).padStart(2, '0');

  function isNever(at) {
    return !at || at === NEVER || String(at).startsWith('0001-');
  }

  // "2026-11-27 10:04 UTC": one time zone for everyone who reads the same key.
  function formatTime(at) {
    const date = new Date(at);
    if (Number.isNaN(date.getTime())) return String(at);
    return `${date.getUTCFullYear()}-${pad(date.getUTCMonth() + 1)}-${pad(date.getUTCDate())} `
      + `${pad(date.getUTCHours())}:${pad(date.getUTCMinutes())} UTC`;
  }

  // A table cell for a time: its date and its clock each kept whole, so a narrow table
  // may put them on two lines but never breaks the date at its hyphens.
  function timeCell(text) {
    const [day, ...rest] = String(text).split(' ');
    const parts = [el('span', { className: 'day', text: day })];
    if (rest.length) parts.push(' ', el('span', { className: 'clock', text: rest.join(' ') }));
    return el('td', { className: 'time' }, parts);
  }

  function dateOnly(ms) {
    const date = new Date(ms);
    return `${date.getUTCFullYear()}-${pad(date.getUTCMonth() + 1)}-${pad(date.getUTCDate())}`;
  }

  // RFC 3339 without milliseconds, as keygate writes its own times.
  function timestamp(ms) {
    return new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
  }

  // A date input's day as the key's expiry: 00:00 UTC that day.
  function expiryOf(day) {
    return day ? `${day}T00:00:00Z` : '';
  }

  // The first day whose 00:00 UTC is at least 24 hours away: the earliest expiry offered.
  function earliestExpiryDay(now = Date.now()) {
    return dateOnly(Math.ceil((now + DAY_MS) / DAY_MS) * DAY_MS);
  }

  function formatDuration(ms) {
    const seconds = Math.round(Number(ms) / 1000);
    if (!seconds) return 'none';
    const units = [[86400, 'day'], [3600, 'hour'], [60, 'minute'], [1, 'second']];
    for (const [size, unit] of units) {
      if (seconds % size === 0) {
        const count = seconds / size;
        return `${count} ${unit}${count === 1 ? '' : 's'}`;
      }
    }
    return `${seconds} seconds`;
  }

  function describeRate(rate) {
    if (!rate) return 'none';
    const unit = WINDOW_NAMES.get(Number(rate.window_ms));
    return `${rate.limit} per ${unit || formatDuration(rate.window_ms)}`;
  }

  function describeCredits(credits) {
    if (!credits) return 'none';
    const { refill } = credits;
    const again = refill
      ? `, refilled ${String(refill.interval).toLowerCase()} to ${refill.amount}` : '';
    return `${credits.remaining} credits${again}`;
  }

  function parseScopes(text) {
    return text.split(/[\s,]+/).filter(Boolean);
  }

  const sameList = (a, b) => Array.isArray(a) && Array.isArray(b)
    && a.length === b.length && a.every((item, i) => item === b[i]);

  const plural = (count, word) => `${count} ${word}${count === 1 ? '' : 's'}`;

  // ---- Key status ----

  // A rotated key is never revoked by its rotation: it shows as rotated-out because its
  // successor, listed with it, names it in rotated_from.
  function statusOf(key) {
    if (key.is_revoked) return 'revoked';
    if (state.keys.some((other) => other.rotated_from === key.api_key_id)) return 'rotated-out';
    if (Date.parse(key.expires_at) <= Date.now()) return 'expired';
    return 'active';
  }

  // A rotated-out key still in its grace period works: it can be revoked (the answer to
  // a leak), though no longer edited or rotated again.
  function actionsFor(key, status) {
    if (status === 'active') return ['edit', 'rotate', 'revoke', 'events', 'usage'];
    if (status === 'expired') return ['edit', 'revoke', 'events', 'usage'];
    if (status === 'rotated-out' && Date.parse(key.expires_at) > Date.now()) {
      return ['revoke', 'events', 'usage'];
    }
    return ['events', 'usage'];
  }

  // A key of the list by its id, as parts of a sentence.
  function keyLabel(id) {
    const known = state.keys.find((key) => key.api_key_id === id);
    return known ? [bdi(known.name), ' (', bdi(id), ')'] : [bdi(id)];
  }

  // Whether `key` may be the one this page is signed in with: its hint (the first
  // characters of its secret, then "...", crates/core/src/secret.rs) starts that key.
  function maybeSignedInWith(key) {
    if (!state.key || state.master) return false;
    const hint = String(key.key || '');
    const start = hint.endsWith('...') ? hint.slice(0, -3) : hint;
    return start.length > 0 && state.key.startsWith(start);
  }

  // ---- Signing in and out ----

  function signedIn() {
    return Boolean(state.key);
  }

  function showSignedIn() {
    $('sign-in').hidden = true;
    $('sign-in-retry').hidden = true;
    $('session').hidden = false;
    $('whoami').replaceChildren(...(state.master ? ['Signed in with the master key']
      : ['Signed in with an API key', ...(state.owner ? [' of ', bdi(state.owner)] : [])]));
  }

  function closePanels() {
    state.events.request += 1;
    state.usage.request += 1;
    state.events.key = null;
    state.usage.key = null;
    $('events').hidden = true;
    $('usage').hidden = true;
    $('events-table').tBodies[0].replaceChildren();
    clearUsage();
  }

  function showSignedOut({ keepSecret = false } = {}) {
    for (const id of ['session', 'owner-section', 'keys-panel']) $(id).hidden = true;
    closePanels();
    if (!keepSecret) hideSecret();
    for (const dialog of document.querySelectorAll('dialog[open]')) dialog.close();
    state.list.request += 1;
    const table = $('keys');
    table.tBodies[0].replaceChildren();
    table.removeAttribute('data-owner');
    table.setAttribute('aria-busy', 'false');
    $('owner').value = '';
    markValid($('owner'));
    $('sign-in').hidden = false;
  }

  function forget() {
    state.key = null;
    state.master = false;
    state.owner = '';
    state.keys = [];
    store(KEY_STORAGE, '');
    store(OWNER_STORAGE, '');
  }

  async function signIn(key, { saved = false } = {}) {
    newSessionEpoch();
    const t = ticket('session');
    clearError();
    markValid($('sign-in-key'));
    setStatus('Signing in…');
    let keys;
    try {
      keys = await whileBusy($('sign-in-form'), () => api('GET', '/api-keys', { key, t }));
    } catch (error) {
      if (error instanceof ApiError && error.code === 'APIKEY_OWNER_REQUIRED') {
        return signedInAsMaster(key, t);
      }
      if (error instanceof Stale) throw error;
      const refused = error instanceof ApiError && (error.status === 401 || error.status === 403);
      if (saved && !refused) {
        // The network, a busy server: the key may be fine. It stays, to try again.
        $('sign-in-retry').hidden = false;
        throw new PlainError(['Could not sign in with the key this tab kept (press Try again, '
          + 'or sign in with another key): ', ...partsOf(describe(error))]);
      }
      if (saved) {
        // Refused: the kept key is no good any more.
        forget();
        $('sign-in-retry').hidden = true;
      }
      showSignedOut({ keepSecret: true });
      throw error;
    }
    keep(t);
    // An API key lists its own owner's keys, its own among them.
    state.key = key;
    state.master = false;
    store(KEY_STORAGE, key);
    store(OWNER_STORAGE, '');
    $('sign-in-key').value = '';
    const list = Array.isArray(keys) ? keys : [];
    state.owner = list.length ? list[0].owner_id : '';
    showSignedIn();
    $('owner-section').hidden = Boolean(state.owner);
    state.list.request += 1;
    showKeys(list);
    listDrawn();
    setStatus('Signed in');
    if (!state.owner) $('owner').focus();
    return undefined;
  }

  async function signedInAsMaster(key, t) {
    keep(t);
    state.key = key;
    state.master = true;
    store(KEY_STORAGE, key);
    $('sign-in-key').value = '';
    showSignedIn();
    $('owner-section').hidden = false;
    // The owner chosen before a reload, if any, is shown again.
    const owner = stored(OWNER_STORAGE);
    $('owner').value = owner;
    if (owner) {
      await chooseOwner(owner);
    } else {
      setStatus('Signed in with the master key: choose an owner');
      $('owner').focus();
    }
  }

  // Signs out: every request in flight is aborted and its answer dropped.
  function signOut({ keepSecret = false } = {}) {
    newSessionEpoch();
    pending.clear(); // what was on its way is aborted: the same work may start again
    forget();
    showSignedOut({ keepSecret });
    clearError();
    $('sign-in-retry').hidden = true;
    $('sign-in-key').value = '';
    setStatus('Signed out');
    $('sign-in-key').focus();
  }

  // keygate refused the signed-in key in the middle of a session: signed out, with why.
  // A secret on show stays, to be copied.
  function sessionOver(error) {
    const keepSecret = secretShown();
    signOut({ keepSecret });
    showError(new PlainError(['Signed out: keygate no longer accepts the key you signed in '
      + 'with — ', ...partsOf(describe(error)), '.',
    keepSecret ? ' The new secret stays shown below until you press Done.' : '',
    ' Sign in again with a key that works.']));
  }

  // ---- The keys table ----

  // Another owner's keys: what was shown of the previous owner goes, and earlier answers
  // about it are dropped.
  async function chooseOwner(owner) {
    markValid($('owner'));
    if (!owner) throw new PlainError('Enter an owner to show their keys.', $('owner'));
    if (owner !== state.owner || !$('keys').dataset.owner) {
      newOwnerEpoch();
      closePanels();
      state.owner = owner;
      state.keys = [];
      store(OWNER_STORAGE, state.master ? owner : '');
      showSignedIn();
      const table = $('keys');
      table.removeAttribute('data-owner');
      setKeysTitle();
      $('new-key-button').disabled = !state.owner;
      $('keys-panel').hidden = false;
      table.tBodies[0].replaceChildren(el('tr', { className: 'empty' }, [
        el('td', { text: 'Loading keys…', attrs: { colspan: '7' } }),
      ]));
    }
    setStatus(['Loading keys of ', bdi(owner), '…']);
    const t = ticket();
    try {
      await loadKeys();
    } catch (error) {
      const body = $('keys').tBodies[0];
      if (current(t) && !(error instanceof Stale) && !body.querySelector('tr[data-key-id]')) {
        body.replaceChildren(el('tr', { className: 'empty' }, [
          el('td', { text: 'The keys could not be loaded: Refresh tries again.',
            attrs: { colspan: '7' } }),
        ]));
      }
      throw error;
    }
    clearError();
    setStatus([`${plural(state.keys.length, 'key')} of `, bdi(owner)]);
  }

  // Lists the current owner's keys; of overlapping requests only the newest is drawn.
  // While one is on its way table#keys has aria-busy="true"; once the newest is drawn,
  // aria-busy="false" and data-owner names whose keys they are.
  async function loadKeys() {
    const t = ticket();
    const request = ++state.list.request;
    const latest = () => current(t) && request === state.list.request;
    const table = $('keys');
    table.setAttribute('aria-busy', 'true');
    const owner = state.master || !state.keys.length ? state.owner : undefined;
    let keys;
    try {
      keys = await api('GET', `/api-keys${query({ owner })}`, { t });
    } finally {
      if (latest()) table.setAttribute('aria-busy', 'false');
    }
    if (!latest()) throw new Stale('a newer list');
    showKeys(Array.isArray(keys) ? keys : []);
    listDrawn();
    return state.keys;
  }

  function listDrawn() {
    const table = $('keys');
    table.dataset.owner = state.owner;
    table.setAttribute('aria-busy', 'false');
  }

  function setKeysTitle() {
    const title = state.owner ? ['Keys of ', bdi(state.owner)] : ['Keys'];
    $('keys-title').replaceChildren(...title);
    $('keys-caption').replaceChildren(...(state.owner ? ['Keys of ', bdi(state.owner)] : ['Keys']));
  }

  function showKeys(keys) {
    state.keys = keys;
    if (!state.master && keys.length) state.owner = keys[0].owner_id;
    setKeysTitle();
    $('new-key-button').disabled = !state.owner;
    $('keys-panel').hidden = false;
    renderKeys();
  }

  // Lists the keys again after a change or on Refresh, then the open panels too.
  async function refreshAll() {
    await loadKeys();
    refreshPanels();
  }

  // The Events and Usage panels, if open, drawn again for their key (as now listed).
  function refreshPanels() {
    const now = (key) => state.keys.find((k) => k.api_key_id === key.api_key_id) || key;
    if (!$('events').hidden && state.events.key) {
      const key = now(state.events.key);
      run(() => showEvents(key, { quiet: true }));
    }
    if (!$('usage').hidden && state.usage.key) {
      const key = now(state.usage.key);
      run(() => showUsage(key, { quiet: true }));
    }
  }

  // Row buttons with a request of theirs on its way, as "action:id".
  const rowsBusy = new Set();

  function rowButton(id, action) {
    const row = Array.from($('keys').tBodies[0].rows).find((r) => r.dataset.keyId === id);
    return row ? row.querySelector(`button[data-action="${action}"]`) : null;
  }

  async function whileRowBusy(id, action, work) {
    const mark = `${action}:${id}`;
    rowsBusy.add(mark);
    setBusy(rowButton(id, action), true);
    try {
      return await work();
    } finally {
      rowsBusy.delete(mark);
      const button = rowButton(id, action);
      if (button) {
        busyCount.delete(button);
        button.removeAttribute('aria-busy');
        button.removeAttribute('aria-disabled');
      }
    }
  }

  // What each row was drawn from.
  const rowSignatures = new WeakMap();

  function renderKeys() {
    const body = $('keys').tBodies[0];
    // Focus within the table survives the rows being made anew.
    const active = document.activeElement;
    const focusedRow = active && body.contains(active) ? active.closest('tr') : null;
    const remembered = focusedRow
      ? { id: focusedRow.dataset.keyId, action: active.dataset.action } : null;

    if (!state.keys.length) {
      body.replaceChildren(el('tr', { className: 'empty' }, [
        el('td', { text: 'No keys yet for this owner.', attrs: { colspan: '7' } }),
      ]));
      if (remembered) focusKeyControl(remembered.id, remembered.action);
      return;
    }
    // A row whose key is unchanged stays the same element (its focus and any reference
    // to it survive); the others are made anew.
    const existing = new Map(Array.from(body.rows)
      .filter((row) => row.dataset.keyId).map((row) => [row.dataset.keyId, row]));
    const rows = state.keys.map((key) => {
      const status = statusOf(key);
      const signature = JSON.stringify([key, status, actionsFor(key, status)]);
      const old = existing.get(key.api_key_id);
      return old && rowSignatures.get(old) === signature ? old : keyRow(key, status, signature);
    });
    rows.forEach((row, i) => {
      if (body.rows[i] !== row) body.insertBefore(row, body.rows[i] || null);
    });
    while (body.rows.length > rows.length) body.rows[body.rows.length - 1].remove();
    if (remembered && !body.contains(document.activeElement)) {
      focusKeyControl(remembered.id, remembered.action);
    }
  }

  function keyRow(key, status, signature) {
    const row = el('tr');
    row.dataset.keyId = key.api_key_id;
    rowSignatures.set(row, signature);

    const scopes = el('td', { className: 'scopes' });
    for (const scope of key.scopes || []) {
      scopes.append(el('code', { className: 'scope', text: scope }), ' ');
    }
    const limits = [];
    if (key.ratelimit) limits.push(describeRate(key.ratelimit));
    if (key.credits) limits.push(describeCredits(key.credits));
    if (limits.length) scopes.append(el('span', { className: 'limits', text: limits.join(' · ') }));

    const lastUsed = isNever(key.last_used_at) ? 'never' : formatTime(key.last_used_at);
    // The buttons wrap inside the cell, so the table fits its panel without scrolling.
    const buttons = el('div', { className: 'row-actions-list' });
    const actions = el('td', { className: 'row-actions' }, [buttons]);
    const who = key.name || key.api_key_id;
    for (const action of actionsFor(key, status)) {
      const button = el('button', {
        text: ROW_ACTIONS[action],
        className: action === 'revoke' ? 'small danger-text' : 'small',
        attrs: { type: 'button', 'aria-label': `${ROW_ACTIONS[action]} ${who}` },
      });
      button.dataset.action = action;
      if (rowsBusy.has(`${action}:${key.api_key_id}`)) setBusy(button, true);
      buttons.append(button);
    }

    row.append(
      el('td', { className: 'name', text: key.name }),
      el('td', { className: 'id' }, [el('code', { text: key.api_key_id })]),
      scopes,
      el('td', {}, [el('span', { className: `badge badge-${status}`, text: status })]),
      timeCell(formatTime(key.expires_at)),
      timeCell(lastUsed),
      actions,
    );
    return row;
  }

  function focusKeyControl(id, action) {
    const row = Array.from($('keys').tBodies[0].rows).find((r) => r.dataset.keyId === id);
    const target = row
      && (row.querySelector(`button[data-action="${action}"]`) || row.querySelector('button'));
    (target || $('keys-title')).focus();
  }

  // ---- Dialogs: filled from a template when opened, emptied when closed ----

  const returnTo = new WeakMap();

  function openDialog(id, templateId, back) {
    const dialog = $(id);
    dialog.replaceChildren($(templateId).content.cloneNode(true));
    returnTo.set(dialog, back);
    dialog.showModal();
    return dialog;
  }

  function watchDialog(dialog) {
    dialog.addEventListener('close', () => {
      const active = document.activeElement;
      const focusLost = !active || active === document.body || dialog.contains(active);
      dialog.replaceChildren();
      if (!focusLost) return; // focus already went back, or on to the secret panel
      const back = returnTo.get(dialog);
      if (back && back.element && back.element.isConnected && !back.element.closest('[hidden]')) {
        back.element.focus();
      } else if (back && back.id) focusKeyControl(back.id, back.action);
      else if (signedIn()) $('keys-title').focus();
      else $('sign-in-key').focus();
    });
  }

  function origin(button, key) {
    return { element: button, id: key ? key.api_key_id : null, action: button.dataset.action };
  }

  // Shows the warning that `key` may be the signed-in one, if it may be.
  function warnIfSignedInWith(dialog, key, text) {
    const warning = dialog.querySelector('.self-warning');
    if (!warning || !maybeSignedInWith(key)) return;
    warning.replaceChildren(el('strong', { text: 'This may be the key you are signed in with.' }),
      ` ${text}`);
    warning.hidden = false;
  }

  // ---- Discarding a secret on show: asked first ----

  function secretShown() {
    return !$('secret-panel').hidden && Boolean($('secret').value);
  }

  // Resolves true once the person chooses Discard secret, false on Cancel or Escape.
  function confirmDiscard(what, back) {
    return new Promise((resolve) => {
      const dialog = openDialog('confirm-discard', 'confirm-discard-template',
        { element: back });
      dialog.querySelector('.discard-what').textContent = what;
      let answer = false;
      dialog.addEventListener('close', () => resolve(answer), { once: true });
      dialog.querySelector('.cancel').addEventListener('click', () => dialog.close());
      dialog.querySelector('.confirm').addEventListener('click', () => {
        answer = true;
        dialog.close();
      });
      dialog.querySelector('.cancel').focus();
    });
  }

  // ---- Revoke ----

  function askRevoke(key, button) {
    const dialog = openDialog('confirm-revoke', 'confirm-revoke-template', origin(button, key));
    dialog.querySelector('.revoke-name').textContent = key.name;
    dialog.querySelector('.revoke-id').textContent = key.api_key_id;
    warnIfSignedInWith(dialog, key, 'Revoking it signs this console out as well.');
    const confirm = dialog.querySelector('.confirm');
    on(dialog.querySelector('.cancel'), 'click', () => dialog.close());
    const opening = {}; // this dialog's opening: a repeat click is dropped, a new opening not
    on(confirm, 'click', () => once('revoke', opening, () => whileBusy(confirm, async () => {
      const t = ticket('session');
      setStatus('Revoking key…');
      try {
        await api('DELETE', keyUrl(key), { t });
      } finally {
        if (dialog.open && current(t)) dialog.close();
      }
      clearError();
      setStatus('Key revoked');
      await refreshAll();
    })));
    dialog.querySelector('.cancel').focus();
  }

  // ---- New key and Edit: one form, two dialogs ----

  function keyForm(dialog) {
    const field = (id) => dialog.querySelector(`#${id}`);
    return {
      form: dialog.querySelector('form'),
      name: field('key-name'),
      scopes: field('key-scopes'),
      resource: field('key-scope-resource'),
      action: field('key-scope-action'),
      expires: field('key-expires'),
      expiresHint: field('key-expires-hint'),
      rate: field('key-rate'),
      window: field('key-window'),
      credits: field('key-credits'),
      refill: field('key-refill'),
      refillAmount: field('key-refill-amount'),
      refillAmountField: dialog.querySelector('.refill-amount'),
      refillHint: field('key-refill-hint'),
      submit: dialog.querySelector('.submit'),
      error: field('key-form-error'),
    };
  }

  function openKeyForm(mode, key, button) {
    const editing = mode === 'edit';
    const dialog = openDialog(editing ? 'edit-key' : 'new-key', 'key-form-template',
      origin(button, key));
    const f = keyForm(dialog);
    dialog.querySelector('#key-form-title').replaceChildren(...(editing
      ? ['Edit ', bdi(key.name)] : ['Create a key']));
    dialog.querySelector('.form-note').replaceChildren(...(editing
      ? [bdi(key.api_key_id), ', of ', bdi(key.owner_id), '. Only what you change is saved.']
      : ['For ', bdi(state.owner), '. Its secret is shown once, right after it is made.']));
    f.submit.textContent = editing ? 'Save' : 'Create';
    f.resource.append(...RESOURCES.map((r) => el('option', { text: r, attrs: { value: r } })));
    f.action.append(...ACTIONS.map((a) => el('option', { text: a, attrs: { value: a } })));
    f.resource.value = 'ledgers';
    f.action.value = 'read';
    f.expires.min = earliestExpiryDay();

    if (editing) {
      f.name.value = key.name;
      f.scopes.value = (key.scopes || []).join(' ');
      f.expires.value = dateOnly(Date.parse(key.expires_at));
      if (key.ratelimit) {
        const windowMs = String(key.ratelimit.window_ms);
        if (!Array.from(f.window.options).some((o) => o.value === windowMs)) {
          f.window.append(el('option', {
            text: `per ${formatDuration(windowMs)}`, attrs: { value: windowMs },
          }));
        }
        f.rate.value = String(key.ratelimit.limit);
        f.window.value = windowMs;
      }
      if (key.credits) {
        f.credits.value = String(key.credits.remaining);
        const { refill } = key.credits;
        f.refill.value = refill ? String(refill.interval).toLowerCase() : '';
        if (refill) f.refillAmount.value = String(refill.amount);
      }
    } else {
      f.expires.value = dateOnly(Date.now() + 90 * DAY_MS);
    }
    // What the form showed at first: an untouched field leaves its value as it is.
    const shown = {
      expires: f.expires.value,
      credits: f.credits.value,
      refill: f.refill.value,
      refillAmount: f.refillAmount.value,
    };

    const explainRefill = () => {
      f.refillAmountField.hidden = !f.refill.value;
      let text = '';
      if (f.refill.value) {
        text = editing
          ? 'Refill amount: what each refill sets the credits back to.'
          : 'Refill amount: what each refill sets the credits back to. Empty: the Credits '
            + 'given here.';
      }
      if (editing && key.credits) {
        text = `${text} Saving a change to the credits sets the credits left to the Credits `
          + `shown (now ${key.credits.remaining}; requests since this form opened may have `
          + 'spent some).';
      }
      f.refillHint.textContent = text.trim();
    };
    explainRefill();
    const explainExpiry = () => {
      f.expiresHint.textContent = expiryEffect(f, editing ? key : null, shown.expires);
    };
    explainExpiry();

    on(f.refill, 'change', explainRefill);
    on(f.expires, 'input', explainExpiry);
    on(f.expires, 'change', explainExpiry);
    f.form.addEventListener('input', (event) => markValid(event.target));
    on(dialog.querySelector('.add-scope'), 'click', () => addScope(f));
    on(dialog.querySelector('.cancel'), 'click', () => dialog.close());
    // Keyed by this opening's fields: a repeat submit is dropped, a new opening's is not.
    on(f.form, 'submit', () => once(editing ? 'save' : 'create', f,
      () => whileBusy(f.submit, () => (editing
        ? saveKey(dialog, f, key, shown)
        : createKey(dialog, f)))));
    f.name.focus();
  }

  // What the chosen day means, to the minute in UTC.
  function expiryEffect(f, key, shownExpiry) {
    if (f.expires.validity.badInput) return 'Enter a whole date: year, month and day.';
    const day = f.expires.value;
    if (!day) return 'Choose the day the key stops working.';
    if (key && day === shownExpiry) {
      return `Unchanged: the key stops working at ${formatTime(key.expires_at)}.`;
    }
    const at = Date.parse(expiryOf(day));
    if (Number.isNaN(at)) return 'Enter a whole date: year, month and day.';
    const left = at - Date.now();
    let when = '';
    if (left <= 0) when = ', which has passed';
    else if (left < DAY_MS) when = ', less than 24 hours from now';
    else when = `, in ${plural(Math.floor(left / DAY_MS), 'day')}`;
    return `The key stops working at ${formatTime(at)}${when}.`;
  }

  // The expiry to send, checked as the server would (and at least 24 hours away).
  function checkedExpiry(f) {
    const day = f.expires.value;
    if (f.expires.validity.badInput || (day && Number.isNaN(Date.parse(expiryOf(day))))) {
      throw new PlainError('Expires: enter a whole date (year, month and day).', f.expires);
    }
    if (!day) throw new PlainError('Expires: choose the day the key stops working.', f.expires);
    const earliest = earliestExpiryDay();
    if (day < earliest) {
      throw new PlainError(`Expires: choose ${earliest} or later, so the key works for at `
        + 'least 24 hours.', f.expires);
    }
    return expiryOf(day);
  }

  function addScope(f) {
    const scope = `${f.resource.value}:${f.action.value}`;
    const scopes = parseScopes(f.scopes.value);
    if (!scopes.includes(scope)) scopes.push(scope);
    f.scopes.value = scopes.join(' ');
  }

  // A whole number in `input`, at least `least`; null for an empty field.
  function wholeNumber(input, label, least) {
    if (input.validity.badInput) throw new PlainError(`${label} must be a number.`, input);
    const text = input.value.trim();
    if (text === '') return null;
    if (!/^\d+$/.test(text) || Number(text) < least) {
      throw new PlainError(`${label} must be a whole number, ${least} or more.`, input);
    }
    return Number(text);
  }

  function rateOf(f) {
    const limit = wholeNumber(f.rate, 'Rate limit (requests)', 1);
    return limit === null ? null : { limit, window_ms: Number(f.window.value) };
  }

  // The credits as the fields say; null for none. A refill's amount is its own field,
  // never the credits left: those may have been spent.
  function creditsOf(f, editing) {
    const remaining = wholeNumber(f.credits, 'Credits', 0);
    if (remaining === null) {
      if (f.refill.value) {
        throw new PlainError('Credits: enter the credits to refill, or choose No refill.',
          f.credits);
      }
      return null;
    }
    const credits = { remaining };
    if (f.refill.value) {
      let amount = wholeNumber(f.refillAmount, 'Refill amount', 1);
      if (amount === null) {
        if (editing) {
          throw new PlainError('Refill amount: enter what each refill sets the credits back to.',
            f.refillAmount);
        }
        amount = Math.max(1, remaining);
      }
      credits.refill = { amount, interval: f.refill.value };
    }
    return credits;
  }

  // The field a server's validation error names, if the form has it.
  function fieldOf(f, error) {
    const name = error instanceof ApiError && error.details && error.details.field;
    if (!name) return null;
    const fields = [['name', f.name], ['scopes', f.scopes], ['expires_at', f.expires],
      ['ratelimit', f.rate], ['credits.refill.amount', f.refillAmount],
      ['credits.refill', f.refill], ['credits', f.credits]];
    const found = fields.find(([prefix]) => name === prefix || name.startsWith(`${prefix}.`));
    return found ? found[1] : null;
  }

  // A failure while the form is open is said once, in the form, by the field it is about.
  function failIn(dialog, f, error) {
    if (error instanceof Stale || !dialog.open) throw error;
    announce(f.error, describe(error));
    clearError();
    setStatus('');
    const field = (error instanceof PlainError && error.field) || fieldOf(f, error);
    if (field) {
      if (field === f.refillAmount) f.refillAmountField.hidden = false;
      markInvalid(field, 'key-form-error');
      field.focus();
    }
    throw new Shown();
  }

  async function createKey(dialog, f) {
    const t = ticket('session');
    markAllValid(f.form);
    announce(f.error, '');
    let created;
    try {
      const body = {
        name: f.name.value.trim(),
        owner: state.owner,
        scopes: parseScopes(f.scopes.value),
        expires_at: checkedExpiry(f),
      };
      const ratelimit = rateOf(f);
      const credits = creditsOf(f, false);
      if (ratelimit) body.ratelimit = ratelimit;
      if (credits) body.credits = credits;
      setStatus('Creating key…');
      created = await api('POST', '/api-keys', { body, t });
    } catch (error) {
      failIn(dialog, f, error);
    }
    // The key exists now: its secret is shown even if the dialog was closed meanwhile.
    if (dialog.open) dialog.close();
    clearError();
    showSecret(created, 'Key created');
    setStatus('Key created');
    await refreshAll();
  }

  async function saveKey(dialog, f, key, shown) {
    const t = ticket('session');
    markAllValid(f.form);
    announce(f.error, '');
    const patch = {};
    try {
      // Spaces around a name are not a change of it.
      const name = f.name.value.trim();
      if (name !== String(key.name).trim()) patch.name = name;
      const scopes = parseScopes(f.scopes.value);
      if (!sameList(scopes, key.scopes)) patch.scopes = scopes;
      if (f.expires.value !== shown.expires) patch.expires_at = checkedExpiry(f);
      const ratelimit = rateOf(f);
      if (describeRate(ratelimit) !== describeRate(key.ratelimit)) patch.ratelimit = ratelimit;
      // Credits are sent only when a credits field changed: sending them sets the credits
      // left, which would give back what was spent since the list was read.
      const creditsTouched = ['credits', 'refill', 'refillAmount']
        .some((name) => f[name].value !== shown[name]);
      if (creditsTouched) {
        const credits = creditsOf(f, true);
        if (describeCredits(credits) !== describeCredits(key.credits)) patch.credits = credits;
      }
      if (!Object.keys(patch).length) {
        dialog.close();
        setStatus('Nothing changed');
        return;
      }
      setStatus('Saving changes…');
      await api('PATCH', keyUrl(key), { body: patch, t });
    } catch (error) {
      failIn(dialog, f, error);
    }
    if (dialog.open) dialog.close();
    clearError();
    setStatus('Key updated');
    await refreshAll();
  }

  // ---- Rotate: asks first, with the grace period the old key keeps ----

  // The old key never outlives its own expiry: true when that comes before the grace ends.
  function expiresFirst(key, grace) {
    const expires = Date.parse(key.expires_at);
    return !Number.isNaN(expires) && expires <= Date.now() + grace * 1000;
  }

  // What rotating now with `grace` seconds does to the old key, in a sentence.
  function graceEffect(key, grace) {
    if (!grace) {
      return 'The old key stops working the moment you rotate: every client still using '
        + 'it is refused from then on.';
    }
    if (expiresFirst(key, grace)) {
      return `The old key keeps working until it expires, ${formatTime(key.expires_at)}, `
        + 'then stops.';
    }
    return `The old key keeps working for ${formatDuration(grace * 1000)} after you rotate, `
      + 'then stops.';
  }

  function askRotate(key, button) {
    const dialog = openDialog('confirm-rotate', 'confirm-rotate-template', origin(button, key));
    dialog.querySelector('.rotate-name').textContent = key.name;
    dialog.querySelector('.rotate-id').textContent = key.api_key_id;
    warnIfSignedInWith(dialog, key, 'When the old key stops, this console signs out: sign in '
      + 'again with the new secret.');
    const select = dialog.querySelector('#rotate-grace');
    select.append(...GRACE_PERIODS.map(([seconds, text]) => el('option',
      { text, attrs: { value: String(seconds) } })));
    select.value = String(DEFAULT_GRACE);
    const effect = dialog.querySelector('.grace-effect');
    const explain = () => {
      effect.textContent = graceEffect(key, Number(select.value) || 0);
    };
    explain();
    on(select, 'change', explain);
    const confirm = dialog.querySelector('.confirm');
    on(dialog.querySelector('.cancel'), 'click', () => dialog.close());
    const opening = {}; // this dialog's opening: a repeat click is dropped, a new opening not
    on(confirm, 'click', () => once('rotate', opening, () => whileBusy(confirm, () => {
      const grace = Number(select.value) || 0;
      return rotateKey(dialog, key, grace);
    })));
    dialog.querySelector('.cancel').focus();
  }

  async function rotateKey(dialog, key, grace) {
    const t = ticket('session');
    setStatus('Rotating key…');
    let successor;
    try {
      successor = await api('POST', keyUrl(key, '/rotate'),
        { body: { grace_period_seconds: grace }, t });
    } finally {
      if (dialog.open && current(t)) dialog.close();
    }
    clearError();
    showSecret(successor, 'Key rotated');
    let outcome = `the old key keeps working for ${formatDuration(grace * 1000)}`;
    if (!grace) outcome = 'the old key no longer works';
    else if (expiresFirst(key, grace)) {
      outcome = `the old key keeps working until it expires, ${formatTime(key.expires_at)}`;
    }
    setStatus(`Key rotated: ${outcome}`);
    await refreshAll();
  }

  // ---- The secret panel: the plaintext, shown once ----

  // While a secret is on show, leaving the page asks first.
  function holdPage(event) {
    event.preventDefault();
    event.returnValue = ''; // older browsers ask only when this is set
  }

  function showSecret(key, what) {
    $('secret-title').replaceChildren(`${what}: `, bdi(key.name));
    $('copy-outcome').textContent = '';
    const input = $('secret');
    input.value = key.key || '';
    $('secret-panel').hidden = false;
    window.addEventListener('beforeunload', holdPage);
    input.focus();
    input.select();
  }

  function hideSecret() {
    $('secret').value = '';
    $('copy-outcome').textContent = '';
    $('secret-panel').hidden = true;
    window.removeEventListener('beforeunload', holdPage);
  }

  function settleWithin(promise, ms) {
    return Promise.race([promise, new Promise((resolve, reject) => {
      setTimeout(() => reject(new Error('timed out')), ms);
    })]);
  }

  async function copySecret() {
    const input = $('secret');
    if (!input.value) return;
    let copied = false;
    if (navigator.clipboard && window.isSecureContext) {
      try {
        await settleWithin(navigator.clipboard.writeText(input.value), 1500);
        copied = true;
      } catch {
        copied = false; // refused (permissions, an unfocused page): try the old way
      }
    }
    if (!copied) {
      input.focus();
      input.select();
      try {
        copied = document.execCommand('copy');
      } catch {
        copied = false;
      }
    }
    const outcome = copied ? 'Copied' : 'Could not copy: select the secret and copy it by hand';
    // Shown by the field, announced by #status alone.
    $('copy-outcome').textContent = outcome;
    setStatus(outcome);
  }

  async function secretDone() {
    hideSecret();
    setStatus('Secret cleared from the page');
    if (!signedIn()) {
      $('sign-in-key').focus();
      return;
    }
    const next = $('new-key-button');
    (next.disabled ? $('keys-title') : next).focus();
    await loadKeys();
  }

  // ---- Events ----

  // Shows the audit trail of `key`; of overlapping requests only the newest is drawn.
  // `quiet` redraws an open panel without moving the focus or the status.
  async function showEvents(key, { quiet = false } = {}) {
    const t = ticket();
    const request = ++state.events.request;
    const latest = () => current(t) && request === state.events.request;
    const panel = $('events');
    panel.setAttribute('aria-busy', 'true');
    if (!quiet) setStatus(['Loading events of ', bdi(key.name), '…']);
    let events;
    try {
      events = await api('GET', keyUrl(key, '/events'), { t });
    } finally {
      if (latest()) panel.setAttribute('aria-busy', 'false');
    }
    if (!latest()) throw new Stale('newer events');
    const same = state.events.key && state.events.key.api_key_id === key.api_key_id;
    state.events = {
      ...state.events,
      key,
      list: Array.isArray(events) ? events : [],
      newestFirst: same && quiet ? state.events.newestFirst : true,
    };
    $('events-title').replaceChildren('Events of ', bdi(key.name));
    $('events-sub').textContent = key.api_key_id;
    renderEvents();
    panel.hidden = false;
    if (quiet) return;
    $('events-title').focus();
    clearError();
    setStatus([`${plural(state.events.list.length, 'event')} of `, bdi(key.name)]);
  }

  function renderEvents() {
    const { list, newestFirst } = state.events;
    // Oldest first by time, the API's order breaking ties; newest first is its reverse.
    const ordered = list.map((event, index) => ({ event, index }))
      .sort((a, b) => (Date.parse(a.event.at) - Date.parse(b.event.at)) || (a.index - b.index))
      .map(({ event }) => event);
    if (newestFirst) ordered.reverse();

    const rows = ordered.map((event) => {
      const lines = describeDetails(event.kind, event.details);
      const details = el('td', { className: 'details' });
      if (lines.length) details.append(el('ul', {}, lines.map((line) => el('li', {}, line))));
      else details.textContent = '—';
      return el('tr', {}, [
        timeCell(formatTime(event.at)),
        el('td', {}, [
          el('span', { className: `kind kind-${kindClass(event.kind)}`, text: event.kind }),
        ]),
        el('td', {}, describeActor(event.actor)),
        details,
      ]);
    });
    if (!rows.length) {
      rows.push(el('tr', { className: 'empty' }, [
        el('td', { text: 'No events recorded.', attrs: { colspan: '4' } }),
      ]));
    }
    $('events-table').tBodies[0].replaceChildren(...rows);
    // The button names the order it switches to.
    $('events-order').textContent = newestFirst ? 'Oldest first' : 'Newest first';
    $('events-caption').replaceChildren('Audit trail of ', bdi(state.events.key.name),
      `, ${newestFirst ? 'newest' : 'oldest'} first`);
  }

  function kindClass(kind) {
    return ['created', 'updated', 'rotated', 'revoked'].includes(kind) ? kind : 'other';
  }

  function describeActor(actor) {
    if (actor === 'master') return ['master key'];
    if (actor === 'cli') return ['command line'];
    return keyLabel(actor);
  }

  // What an event's details say: lines, each a list of text and isolated values.
  function describeDetails(kind, details) {
    if (!details || typeof details !== 'object') return [];
    if (kind === 'created' && details.rotated_from) {
      return [['Made by rotating ', ...keyLabel(details.rotated_from)]];
    }
    if (kind === 'rotated' && details.rotated_to) {
      const grace = Number(details.grace_period_seconds) || 0;
      return [['Replaced by ', ...keyLabel(details.rotated_to)],
        [`Grace period: ${formatDuration(grace * 1000)}`]];
    }
    return Object.entries(details).map(([field, value]) => {
      const label = FIELD_NAMES[field] || field;
      if (value && typeof value === 'object' && 'from' in value && 'to' in value) {
        return [`${label}: `, ...formatValue(field, value.from), ' → ',
          ...formatValue(field, value.to)];
      }
      return [`${label}: `, ...formatValue(field, value)];
    });
  }

  function formatValue(field, value) {
    if (value === null || value === undefined) return ['none'];
    if (field === 'expires_at') return [formatTime(value)];
    if (field === 'scopes' && Array.isArray(value)) return [bdi(value.join(' ') || 'none')];
    if (field === 'ratelimit' && typeof value === 'object') return [describeRate(value)];
    if (field === 'credits' && typeof value === 'object') return [describeCredits(value)];
    if (typeof value === 'string') return ['“', bdi(value), '”'];
    if (typeof value === 'object') return [bdi(JSON.stringify(value))];
    return [String(value)];
  }

  // ---- Usage: an SVG bar chart drawn here, and its numbers as a table ----

  function clearUsage() {
    const chart = $('usage-chart');
    chart.replaceChildren();
    chart.removeAttribute('data-range');
    chart.setAttribute('aria-label', 'Usage chart');
    $('usage-table').tBodies[0].replaceChildren();
    $('usage-totals').textContent = '';
  }

  // Shows the usage of `key`; `quiet` redraws an open panel, in its range, without moving
  // the focus or the status.
  async function showUsage(key, { quiet = false } = {}) {
    const same = state.usage.key && state.usage.key.api_key_id === key.api_key_id;
    if (!same) clearUsage();
    state.usage.key = key;
    if (!quiet) state.usage.range = 'hour';
    $('usage-title').replaceChildren('Usage of ', bdi(key.name));
    $('usage-sub').textContent = key.api_key_id;
    $('usage').hidden = false;
    await loadUsage({ quiet });
    if (!quiet) $('usage-title').focus();
  }

  // The buckets' starts (UTC) that the chart shows, oldest first, ending with the current one.
  function usageSlots(range) {
    const size = range === 'day' ? DAY_MS : HOUR_MS;
    const count = range === 'day' ? 30 : 24;
    const last = Math.floor(Date.now() / size) * size;
    return Array.from({ length: count }, (_, i) => last - (count - 1 - i) * size);
  }

  // Loads and draws the chosen range; of overlapping requests only the newest is drawn.
  // Once drawn, the chart has data-range="24h" or "30d".
  async function loadUsage({ quiet = false } = {}) {
    const t = ticket();
    const { key, range } = state.usage;
    const request = ++state.usage.request;
    const latest = () => current(t) && request === state.usage.request;
    for (const [id, which] of [['usage-hour', 'hour'], ['usage-day', 'day']]) {
      $(id).setAttribute('aria-pressed', String(range === which));
    }
    const panel = $('usage');
    const chart = $('usage-chart');
    chart.removeAttribute('data-range');
    panel.setAttribute('aria-busy', 'true');
    if (!quiet) setStatus('Loading usage…');
    const slots = usageSlots(range);
    let buckets;
    try {
      buckets = await api('GET', keyUrl(key, '/usage',
        { granularity: range, from: timestamp(slots[0]) }), { t });
    } finally {
      if (latest()) panel.setAttribute('aria-busy', 'false');
    }
    if (!latest()) throw new Stale('a newer choice');
    drawUsage(key, range, slots, Array.isArray(buckets) ? buckets : []);
    chart.setAttribute('data-range', range === 'day' ? '30d' : '24h');
    if (quiet) return;
    clearError();
    setStatus(['Usage of ', bdi(key.name), ' loaded']);
  }

  function count(value) {
    const n = Number(value);
    return Number.isFinite(n) && n > 0 ? n : 0;
  }

  // A round step for about four gridlines up to max.
  function niceStep(max) {
    const rough = max / 4;
    if (rough <= 1) return 1;
    const magnitude = 10 ** Math.floor(Math.log10(rough));
    return [1, 2, 5, 10].map((m) => m * magnitude).find((step) => step >= rough);
  }

  function drawUsage(key, range, slots, buckets) {
    const chart = $('usage-chart');
    const W = 720;
    const H = 280;
    const M = { top: 44, right: 16, bottom: 50, left: 60 };
    const plotW = W - M.left - M.right;
    const plotH = H - M.top - M.bottom;
    const numbers = new Intl.NumberFormat('en', { notation: 'compact' });

    // Buckets by start; one outside the slots (a clock apart from the server's) joins them.
    const byStart = new Map();
    for (const bucket of buckets) {
      const at = Date.parse(bucket.at);
      if (!Number.isNaN(at)) byStart.set(at, bucket);
    }
    const starts = Array.from(new Set([...slots, ...byStart.keys()])).sort((a, b) => a - b);
    const series = starts.map((at) => {
      const b = byStart.get(at) || {};
      return {
        at,
        allowed: count(b.allowed),
        denied: count(b.denied),
        rateLimited: count(b.rate_limited),
        exceeded: count(b.usage_exceeded),
      };
    });
    for (const s of series) s.refused = s.denied + s.rateLimited + s.exceeded;
    const total = (name) => series.reduce((sum, s) => sum + s[name], 0);
    const allowed = total('allowed');
    const refused = total('refused');
    const max = Math.max(0, ...series.map((s) => Math.max(s.allowed, s.refused)));
    const step = niceStep(max);
    const top = max ? Math.ceil(max / step) * step : step;
    const y = (v) => M.top + plotH - (v / top) * plotH;
    const period = range === 'day' ? 'the last 30 days' : 'the last 24 hours';

    chart.replaceChildren();
    chart.setAttribute('aria-label',
      `Usage of ${key.name} over ${period}: ${allowed} allowed, ${refused} refused`);

    // Gridlines and the vertical axis's numbers.
    const ticks = max ? top / step : 0;
    for (let i = 0; i <= ticks; i += 1) {
      const value = i * step;
      chart.append(svg('line',
        { class: 'chart-grid', x1: M.left, x2: W - M.right, y1: y(value), y2: y(value) }));
      chart.append(svg('text',
        { class: 'chart-tick', x: M.left - 8, y: y(value) + 4, 'text-anchor': 'end' },
        numbers.format(value)));
    }
    const base = M.top + plotH;
    chart.append(svg('line', { class: 'chart-axis', x1: M.left, x2: M.left, y1: M.top, y2: base }));
    chart.append(svg('line',
      { class: 'chart-axis', x1: M.left, x2: W - M.right, y1: base, y2: base }));

    // Two bars per bucket, side by side; each names its numbers on hover.
    const groupW = plotW / series.length;
    const barW = Math.max(1, groupW * 0.36);
    const every = range === 'day' ? 5 : 3;
    const rows = [];
    series.forEach((s, i) => {
      const x = M.left + i * groupW + (groupW - 2 * barW) / 2;
      const when = range === 'day' ? dateOnly(s.at) : formatTime(s.at);
      const bars = [['allowed', s.allowed, x, `${when}: ${s.allowed} allowed`],
        ['refused', s.refused, x + barW, `${when}: ${s.refused} refused (${s.denied} denied, `
          + `${s.rateLimited} rate-limited, ${s.exceeded} out of credits)`]];
      for (const [kind, value, left, title] of bars) {
        if (!value) continue;
        const bar = svg('rect', { class: `bar bar-${kind}`, x: left, y: y(value), width: barW,
          height: Math.max(1, M.top + plotH - y(value)) });
        bar.append(svg('title', {}, title));
        chart.append(bar);
      }
      if ((series.length - 1 - i) % every === 0) {
        const date = new Date(s.at);
        const label = range === 'day'
          ? `${pad(date.getUTCMonth() + 1)}-${pad(date.getUTCDate())}`
          : `${pad(date.getUTCHours())}:00`;
        chart.append(svg('text', { class: 'chart-tick', x: M.left + (i + 0.5) * groupW,
          y: M.top + plotH + 18, 'text-anchor': 'middle' }, label));
      }
      rows.push(el('tr', {}, [
        el('th', { text: when, attrs: { scope: 'row' } }),
        ...[s.allowed, s.refused, s.denied, s.rateLimited, s.exceeded]
          .map((n) => el('td', { text: n })),
      ]));
    });

    // Axis titles and the legend.
    chart.append(svg('text', { class: 'chart-label', x: M.left + plotW / 2, y: H - 8,
      'text-anchor': 'middle' }, range === 'day' ? 'Day (UTC)' : 'Hour (UTC)'));
    chart.append(svg('text', { class: 'chart-label', x: 16, y: M.top + plotH / 2,
      'text-anchor': 'middle', transform: `rotate(-90 16 ${M.top + plotH / 2})` }, 'Requests'));
    const legend = [['allowed', 'Allowed'],
      ['refused', 'Refused (denied, rate-limited, out of credits)']];
    let lx = M.left;
    for (const [kind, text] of legend) {
      chart.append(svg('rect', { class: `bar-${kind}`, x: lx, y: 14, width: 12, height: 12 }));
      chart.append(svg('text', { class: 'chart-legend', x: lx + 18, y: 24 }, text));
      lx += 18 + text.length * 7 + 28;
    }
    if (!(allowed + refused)) {
      chart.append(svg('text', { class: 'chart-empty', x: M.left + plotW / 2,
        y: M.top + plotH / 2, 'text-anchor': 'middle' }, 'No requests'));
    }

    // The same numbers for screen readers, newest last, with the totals.
    rows.push(el('tr', {}, [
      el('th', { text: 'Total', attrs: { scope: 'row' } }),
      ...[allowed, refused, total('denied'), total('rateLimited'), total('exceeded')]
        .map((n) => el('td', { text: n })),
    ]));
    $('usage-table').tBodies[0].replaceChildren(...rows);
    $('usage-table-caption').replaceChildren('Usage of ', bdi(key.name), ` over ${period}, by `
      + `${range === 'day' ? 'day' : 'hour'} (UTC)`);

    $('usage-totals').textContent = `Allowed: ${allowed} · Refused: ${refused} `
      + `(denied ${total('denied')}, rate-limited ${total('rateLimited')}, `
      + `out of credits ${total('exceeded')})`;
  }

  // ---- Wiring ----

  function rowAction(event) {
    const button = event.target.closest('button[data-action]');
    if (!button) return undefined;
    const id = button.closest('tr').dataset.keyId;
    const key = state.keys.find((k) => k.api_key_id === id);
    if (!key) return undefined;
    const action = button.dataset.action;
    switch (action) {
      case 'edit': return openKeyForm('edit', key, button);
      case 'rotate': return askRotate(key, button);
      case 'revoke': return askRevoke(key, button);
      case 'events':
        return once('events', id, () => whileRowBusy(id, action, () => showEvents(key)));
      case 'usage':
        return once('usage', id, () => whileRowBusy(id, action, () => showUsage(key)));
      default: return undefined;
    }
  }

  function start() {
    for (const dialog of document.querySelectorAll('dialog')) watchDialog(dialog);

    on($('sign-in-form'), 'submit', () => {
      const input = $('sign-in-key');
      const key = input.value.trim();
      markValid(input);
      if (!key) throw new PlainError('Enter a key to sign in.', input);
      return once('sign-in', key, () => signIn(key));
    });
    $('sign-in-key').addEventListener('input', () => markValid($('sign-in-key')));
    on($('sign-in-retry'), 'click', () => {
      const key = stored(KEY_STORAGE);
      if (!key) {
        $('sign-in-retry').hidden = true;
        $('sign-in-key').focus();
        return undefined;
      }
      return once('sign-in', key, () => whileBusy($('sign-in-retry'),
        () => signIn(key, { saved: true })));
    });
    on($('sign-out'), 'click', async (event) => {
      if (secretShown()
        && !(await confirmDiscard('Signing out clears it from this page.', event.currentTarget))) {
        return;
      }
      signOut();
    });
    on($('owner-form'), 'submit', (event) => {
      const owner = $('owner').value.trim();
      const button = event.submitter || $('owner-form').querySelector('button[type="submit"]');
      return once('owner', owner, async () => {
        if (secretShown() && owner && owner !== state.owner) {
          const discard = await confirmDiscard(
            'Showing the keys of another owner clears it from this page.', button);
          if (!discard) return;
          hideSecret();
        }
        await whileBusy($('owner-form'), () => chooseOwner(owner));
      });
    });
    $('owner').addEventListener('input', () => markValid($('owner')));
    const refresh = $('refresh-keys');
    on(refresh, 'click', () => once('refresh', state.owner, () => whileBusy(refresh, async () => {
      setStatus('Loading keys…');
      await refreshAll();
      clearError();
      setStatus('Keys refreshed');
    })));
    on($('new-key-button'), 'click', (event) => openKeyForm('create', null, event.currentTarget));
    on($('keys').tBodies[0], 'click', rowAction);
    on($('copy-secret'), 'click', copySecret);
    on($('secret-done'), 'click', secretDone);
    on($('events-order'), 'click', () => {
      state.events.newestFirst = !state.events.newestFirst;
      renderEvents();
    });
    for (const [id, range] of [['usage-hour', 'hour'], ['usage-day', 'day']]) {
      on($(id), 'click', () => {
        if (!state.usage.key) return undefined;
        state.usage.range = range;
        return loadUsage();
      });
    }
    for (const panel of ['events', 'usage']) {
      on($(`${panel}-close`), 'click', () => {
        state[panel].request += 1; // an answer still on its way is not shown
        $(panel).hidden = true;
        $(panel).setAttribute('aria-busy', 'false');
        $('keys-title').focus();
      });
    }
    // A last net: whatever slipped past the handlers above is still said in words.
    window.addEventListener('error', (event) => report(event.error || event.message));
    window.addEventListener('unhandledrejection', (event) => report(event.reason));

    // A reload signs in again with the key this tab was given.
    const key = stored(KEY_STORAGE);
    if (key) run(() => once('sign-in', key, () => signIn(key, { saved: true })));
    else $('sign-in-key').focus();
  }

  start();
})();

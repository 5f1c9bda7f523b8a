// keygate console: manage one owner's API keys through keygate's own HTTP API.
//
// The page holds no authority of its own: every call carries the key its user signed in
// with (X-Blnk-Key), kept in memory and in this tab's sessionStorage only. Everything the
// API returns is put on the page with textContent, never parsed as markup, and nothing
// here needs inline script or style, so it runs under a strict Content-Security-Policy.
'use strict';

(() => {
  const KEY_STORAGE = 'keygate.console.key';
  const OWNER_STORAGE = 'keygate.console.owner';
  const NEVER = '0001-01-01T00:00:00Z';
  const HOUR_MS = 3600 * 1000;
  const DAY_MS = 24 * HOUR_MS;
  const SVG_NS = 'http://www.w3.org/2000/svg';

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
  const GRACE_PERIODS = [[0, 'None — stops at once'], [300, '5 minutes'], [3600, '1 hour'],
    [86400, '1 day']];
  const DEFAULT_GRACE = 3600;

  const state = {
    key: null, // the signed-in key; never logged, never put in the markup or the URL
    master: false,
    owner: '',
    keys: [],
    events: { key: null, list: [], newestFirst: true },
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
  class PlainError extends Error {}

  function describe(error) {
    if (error instanceof ApiError) {
      return error.code ? `${error.message} (${error.code})` : error.message;
    }
    if (error instanceof PlainError) return error.message;
    const text = error && error.message ? error.message : String(error);
    return `The console failed: ${text}`;
  }

  function setStatus(text) {
    $('status').textContent = text;
  }

  function showError(error) {
    $('error').textContent = describe(error);
  }

  function clearError() {
    $('error').textContent = '';
  }

  function report(error) {
    showError(error);
    setStatus('');
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

  // One run at a time per kind of work, so a double click sends one request.
  const pending = new Set();
  async function once(kind, work) {
    if (pending.has(kind)) return undefined;
    pending.add(kind);
    try {
      return await work();
    } finally {
      pending.delete(kind);
    }
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

  async function api(method, url, { body, key = state.key } = {}) {
    const headers = { Accept: 'application/json', 'X-Blnk-Key': key || '' };
    const init = { method, headers, cache: 'no-store', credentials: 'omit' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let response;
    let text;
    try {
      response = await fetch(url, init);
      text = await response.text();
    } catch (cause) {
      const why = cause && cause.message ? cause.message : String(cause);
      throw new PlainError(`Could not reach keygate: the network request failed (${why}).`);
    }
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
    throw new ApiError(response.status, message, detail.code || '', detail.details);
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

  // A date input's day as the key's expiry: 00:00 UTC that day. An empty field is sent
  // as it is, for the server to refuse in its own words.
  function expiryOf(day) {
    return day ? `${day}T00:00:00Z` : '';
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

  // ---- Key status ----

  // A rotated key is never revoked by its rotation: it shows as rotated-out because its
  // successor, listed with it, names it in rotated_from.
  function statusOf(key) {
    if (key.is_revoked) return 'revoked';
    if (key.rotated_to || state.keys.some((other) => other.rotated_from === key.api_key_id)) {
      return 'rotated-out';
    }
    if (Date.parse(key.expires_at) <= Date.now()) return 'expired';
    return 'active';
  }

  function actionsFor(status) {
    if (status === 'active') return ['edit', 'rotate', 'revoke', 'events', 'usage'];
    if (status === 'expired') return ['edit', 'revoke', 'events', 'usage'];
    return ['events', 'usage'];
  }

  function keyLabel(id) {
    const known = state.keys.find((key) => key.api_key_id === id);
    return known ? `${known.name} (${id})` : String(id);
  }

  // ---- Signing in and out ----

  function showSignedIn() {
    $('sign-in').hidden = true;
    $('session').hidden = false;
    $('whoami').textContent = state.master ? 'Signed in with the master key'
      : `Signed in with an API key${state.owner ? ` of ${state.owner}` : ''}`;
  }

  function showSignedOut() {
    for (const id of ['session', 'owner-section', 'keys-panel', 'events', 'usage']) {
      $(id).hidden = true;
    }
    hideSecret();
    for (const dialog of document.querySelectorAll('dialog[open]')) dialog.close();
    $('keys').tBodies[0].replaceChildren();
    $('events-table').tBodies[0].replaceChildren();
    $('usage-chart').replaceChildren();
    $('owner').value = '';
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

  async function signIn(key) {
    clearError();
    setStatus('Signing in…');
    let keys;
    try {
      keys = await api('GET', '/api-keys', { key });
    } catch (error) {
      if (error instanceof ApiError && error.code === 'APIKEY_OWNER_REQUIRED') {
        return signedInAsMaster(key);
      }
      forget();
      showSignedOut();
      throw error;
    }
    // An API key lists its own owner's keys, its own among them.
    state.key = key;
    state.master = false;
    store(KEY_STORAGE, key);
    $('sign-in-key').value = '';
    const list = Array.isArray(keys) ? keys : [];
    state.owner = list.length ? list[0].owner_id : '';
    showSignedIn();
    $('owner-section').hidden = Boolean(state.owner);
    showKeys(list);
    setStatus('Signed in');
    if (!state.owner) $('owner').focus();
    return undefined;
  }

  async function signedInAsMaster(key) {
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
      await loadOwner(owner);
    } else {
      setStatus('Signed in with the master key: choose an owner');
      $('owner').focus();
    }
  }

  function signOut() {
    forget();
    showSignedOut();
    clearError();
    $('sign-in-key').value = '';
    setStatus('Signed out');
    $('sign-in-key').focus();
  }

  // ---- The keys table ----

  async function loadOwner(owner) {
    setStatus('Loading keys…');
    const keys = await api('GET', `/api-keys${query({ owner })}`);
    if (owner !== state.owner) {
      // Another owner's keys: panels about the previous owner's keys close.
      $('events').hidden = true;
      $('usage').hidden = true;
    }
    state.owner = owner;
    store(OWNER_STORAGE, state.master ? owner : '');
    showSignedIn();
    showKeys(Array.isArray(keys) ? keys : []);
    clearError();
    const count = state.keys.length;
    setStatus(`${count} key${count === 1 ? '' : 's'} of ${owner}`);
  }

  // Lists the current owner's keys again, quietly (the last outcome stays in #status).
  async function refreshKeys() {
    const owner = state.master || !state.keys.length ? state.owner : undefined;
    const keys = await api('GET', `/api-keys${query({ owner })}`);
    showKeys(Array.isArray(keys) ? keys : []);
  }

  function showKeys(keys) {
    state.keys = keys;
    if (!state.master && keys.length) state.owner = keys[0].owner_id;
    const title = state.owner ? `Keys of ${state.owner}` : 'Keys';
    $('keys-title').textContent = title;
    $('keys-caption').textContent = title;
    $('new-key-button').disabled = !state.owner;
    $('keys-panel').hidden = false;
    renderKeys();
  }

  function renderKeys() {
    const body = $('keys').tBodies[0];
    // Focus within the table survives the rows being made anew.
    const active = document.activeElement;
    const focusedRow = active && body.contains(active) ? active.closest('tr') : null;
    const remembered = focusedRow
      ? { id: focusedRow.dataset.keyId, action: active.dataset.action } : null;

    const rows = state.keys.map(keyRow);
    if (!rows.length) {
      rows.push(el('tr', { className: 'empty' }, [
        el('td', { text: 'No keys yet for this owner.', attrs: { colspan: '7' } }),
      ]));
    }
    body.replaceChildren(...rows);
    if (remembered) focusKeyControl(remembered.id, remembered.action);
  }

  function keyRow(key) {
    const status = statusOf(key);
    const row = el('tr');
    row.dataset.keyId = key.api_key_id;

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
    for (const action of actionsFor(status)) {
      const button = el('button', {
        text: ROW_ACTIONS[action],
        className: action === 'revoke' ? 'small danger-text' : 'small',
        attrs: { type: 'button', 'aria-label': `${ROW_ACTIONS[action]} ${who}` },
      });
      button.dataset.action = action;
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
      if (back && back.element && back.element.isConnected) back.element.focus();
      else if (back && back.id) focusKeyControl(back.id, back.action);
      else $('keys-title').focus();
    });
  }

  function origin(button, key) {
    return { element: button, id: key ? key.api_key_id : null, action: button.dataset.action };
  }

  // ---- Revoke ----

  function askRevoke(key, button) {
    const dialog = openDialog('confirm-revoke', 'confirm-revoke-template', origin(button, key));
    dialog.querySelector('.revoke-name').textContent = key.name;
    dialog.querySelector('.revoke-id').textContent = key.api_key_id;
    on(dialog.querySelector('.cancel'), 'click', () => dialog.close());
    on(dialog.querySelector('.confirm'), 'click', () => once('revoke', async () => {
      setStatus('Revoking key…');
      try {
        await api('DELETE', keyUrl(key));
      } finally {
        if (dialog.open) dialog.close();
      }
      clearError();
      setStatus('Key revoked');
      await refreshKeys();
    }));
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
      rate: field('key-rate'),
      window: field('key-window'),
      credits: field('key-credits'),
      refill: field('key-refill'),
      error: dialog.querySelector('.form-error'),
    };
  }

  function openKeyForm(mode, key, button) {
    const editing = mode === 'edit';
    const dialog = openDialog(editing ? 'edit-key' : 'new-key', 'key-form-template',
      origin(button, key));
    const f = keyForm(dialog);
    dialog.querySelector('#key-form-title').textContent = editing
      ? `Edit ${key.name}` : 'Create a key';
    dialog.querySelector('.form-note').textContent = editing
      ? `${key.api_key_id}, of ${key.owner_id}. Only what you change is saved.`
      : `For ${state.owner}. Its secret is shown once, right after it is made.`;
    dialog.querySelector('.submit').textContent = editing ? 'Save' : 'Create';
    f.resource.append(...RESOURCES.map((r) => el('option', { text: r, attrs: { value: r } })));
    f.action.append(...ACTIONS.map((a) => el('option', { text: a, attrs: { value: a } })));
    f.resource.value = 'ledgers';
    f.action.value = 'read';
    f.expires.min = dateOnly(Date.now() + DAY_MS);

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
      }
    } else {
      f.expires.value = dateOnly(Date.now() + 90 * DAY_MS);
    }
    // What the date field showed at first: an untouched field leaves the expiry as it is.
    const shownExpiry = f.expires.value;

    on(dialog.querySelector('.add-scope'), 'click', () => addScope(f));
    on(dialog.querySelector('.cancel'), 'click', () => dialog.close());
    on(f.form, 'submit', () => (editing
      ? once('save', () => saveKey(dialog, f, key, shownExpiry))
      : once('create', () => createKey(dialog, f))));
    f.name.focus();
  }

  function addScope(f) {
    const scope = `${f.resource.value}:${f.action.value}`;
    const scopes = parseScopes(f.scopes.value);
    if (!scopes.includes(scope)) scopes.push(scope);
    f.scopes.value = scopes.join(' ');
  }

  // The metering fields as the API takes them; null for an empty field (none, or cleared).
  function meteringOf(f, key) {
    for (const [input, label] of [[f.rate, 'Rate limit (requests)'], [f.credits, 'Credits']]) {
      if (input.validity.badInput) throw new PlainError(`${label} must be a number.`);
    }
    const ratelimit = f.rate.value === '' ? null
      : { limit: Number(f.rate.value), window_ms: Number(f.window.value) };
    let credits = null;
    if (f.credits.value !== '') {
      credits = { remaining: Number(f.credits.value) };
      if (f.refill.value) {
        // An unchanged refill keeps its amount; a new one refills to the credits given.
        const before = key && key.credits && key.credits.refill;
        const kept = before && String(before.interval).toLowerCase() === f.refill.value;
        credits.refill = {
          amount: kept ? before.amount : credits.remaining,
          interval: f.refill.value,
        };
      }
    }
    return { ratelimit, credits };
  }

  function failIn(dialog, f, error) {
    if (dialog.open) f.error.textContent = describe(error);
    throw error;
  }

  async function createKey(dialog, f) {
    f.error.textContent = '';
    let created;
    try {
      const body = {
        name: f.name.value.trim(),
        owner: state.owner,
        scopes: parseScopes(f.scopes.value),
        expires_at: expiryOf(f.expires.value),
      };
      const { ratelimit, credits } = meteringOf(f, null);
      if (ratelimit) body.ratelimit = ratelimit;
      if (credits) body.credits = credits;
      setStatus('Creating key…');
      created = await api('POST', '/api-keys', { body });
    } catch (error) {
      failIn(dialog, f, error);
    }
    // The key exists now: its secret is shown even if the dialog was closed meanwhile.
    if (dialog.open) dialog.close();
    clearError();
    showSecret(created, 'Key created');
    setStatus('Key created');
    await refreshKeys();
  }

  async function saveKey(dialog, f, key, shownExpiry) {
    f.error.textContent = '';
    const patch = {};
    try {
      const name = f.name.value.trim();
      if (name !== key.name) patch.name = name;
      const scopes = parseScopes(f.scopes.value);
      if (!sameList(scopes, key.scopes)) patch.scopes = scopes;
      if (f.expires.value !== shownExpiry) patch.expires_at = expiryOf(f.expires.value);
      const { ratelimit, credits } = meteringOf(f, key);
      if (describeRate(ratelimit) !== describeRate(key.ratelimit)) patch.ratelimit = ratelimit;
      if (describeCredits(credits) !== describeCredits(key.credits)) patch.credits = credits;
      if (!Object.keys(patch).length) {
        dialog.close();
        setStatus('Nothing changed');
        return;
      }
      setStatus('Saving changes…');
      await api('PATCH', keyUrl(key), { body: patch });
    } catch (error) {
      failIn(dialog, f, error);
    }
    if (dialog.open) dialog.close();
    clearError();
    setStatus('Key updated');
    await refreshKeys();
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
    on(dialog.querySelector('.cancel'), 'click', () => dialog.close());
    on(dialog.querySelector('.confirm'), 'click', () => once('rotate', () => {
      const grace = Number(select.value) || 0;
      return rotateKey(dialog, key, grace);
    }));
    dialog.querySelector('.cancel').focus();
  }

  async function rotateKey(dialog, key, grace) {
    setStatus('Rotating key…');
    let successor;
    try {
      successor = await api('POST', keyUrl(key, '/rotate'),
        { body: { grace_period_seconds: grace } });
    } finally {
      if (dialog.open) dialog.close();
    }
    clearError();
    showSecret(successor, 'Key rotated');
    let outcome = `the old key keeps working for ${formatDuration(grace * 1000)}`;
    if (!grace) outcome = 'the old key no longer works';
    else if (expiresFirst(key, grace)) {
      outcome = `the old key keeps working until it expires, ${formatTime(key.expires_at)}`;
    }
    setStatus(`Key rotated: ${outcome}`);
    await refreshKeys();
  }

  // ---- The secret panel: the plaintext, shown once ----

  function showSecret(key, what) {
    $('secret-title').textContent = `${what}: ${key.name}`;
    $('copy-outcome').textContent = '';
    const input = $('secret');
    input.value = key.key || '';
    $('secret-panel').hidden = false;
    input.focus();
    input.select();
  }

  function hideSecret() {
    $('secret').value = '';
    $('copy-outcome').textContent = '';
    $('secret-panel').hidden = true;
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
    $('copy-outcome').textContent = outcome;
    setStatus(outcome);
  }

  async function secretDone() {
    hideSecret();
    setStatus('Secret cleared from the page');
    const next = $('new-key-button');
    (next.disabled ? $('keys-title') : next).focus();
    await refreshKeys();
  }

  // ---- Events ----

  async function showEvents(key) {
    setStatus('Loading events…');
    const events = await api('GET', keyUrl(key, '/events'));
    state.events = { key, list: Array.isArray(events) ? events : [], newestFirst: true };
    $('events-title').textContent = `Events of ${key.name}`;
    $('events-caption').textContent = `Audit trail of ${key.name}`;
    $('events-sub').textContent = key.api_key_id;
    renderEvents();
    $('events').hidden = false;
    $('events-title').focus();
    clearError();
    const count = state.events.list.length;
    setStatus(`${count} event${count === 1 ? '' : 's'} of ${key.name}`);
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
      if (lines.length) details.append(el('ul', {}, lines.map((line) => el('li', { text: line }))));
      else details.textContent = '—';
      return el('tr', {}, [
        timeCell(formatTime(event.at)),
        el('td', {}, [
          el('span', { className: `kind kind-${kindClass(event.kind)}`, text: event.kind }),
        ]),
        el('td', { text: describeActor(event.actor) }),
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
    $('events-caption').textContent = `Audit trail of ${state.events.key.name}, `
      + `${newestFirst ? 'newest' : 'oldest'} first`;
  }

  function kindClass(kind) {
    return ['created', 'updated', 'rotated', 'revoked'].includes(kind) ? kind : 'other';
  }

  function describeActor(actor) {
    if (actor === 'master') return 'master key';
    if (actor === 'cli') return 'command line';
    return keyLabel(actor);
  }

  // What an event's details say, as sentences (never markup).
  function describeDetails(kind, details) {
    if (!details || typeof details !== 'object') return [];
    if (kind === 'created' && details.rotated_from) {
      return [`Made by rotating ${keyLabel(details.rotated_from)}`];
    }
    if (kind === 'rotated' && details.rotated_to) {
      const grace = Number(details.grace_period_seconds) || 0;
      return [`Replaced by ${keyLabel(details.rotated_to)}`,
        `Grace period: ${formatDuration(grace * 1000)}`];
    }
    return Object.entries(details).map(([field, value]) => {
      const label = FIELD_NAMES[field] || field;
      if (value && typeof value === 'object' && 'from' in value && 'to' in value) {
        return `${label}: ${formatValue(field, value.from)} → ${formatValue(field, value.to)}`;
      }
      return `${label}: ${formatValue(field, value)}`;
    });
  }

  function formatValue(field, value) {
    if (value === null || value === undefined) return 'none';
    if (field === 'expires_at') return formatTime(value);
    if (field === 'scopes' && Array.isArray(value)) return value.join(' ') || 'none';
    if (field === 'ratelimit' && typeof value === 'object') return describeRate(value);
    if (field === 'credits' && typeof value === 'object') return describeCredits(value);
    if (typeof value === 'string') return `“${value}”`;
    if (typeof value === 'object') return JSON.stringify(value);
    return String(value);
  }

  // ---- Usage: an SVG bar chart drawn here ----

  async function showUsage(key) {
    state.usage.key = key;
    state.usage.range = 'hour';
    $('usage-title').textContent = `Usage of ${key.name}`;
    $('usage-sub').textContent = key.api_key_id;
    $('usage').hidden = false;
    await loadUsage();
    $('usage-title').focus();
  }

  // The buckets' starts (UTC) that the chart shows, oldest first, ending with the current one.
  function usageSlots(range) {
    const size = range === 'day' ? DAY_MS : HOUR_MS;
    const count = range === 'day' ? 30 : 24;
    const last = Math.floor(Date.now() / size) * size;
    return Array.from({ length: count }, (_, i) => last - (count - 1 - i) * size);
  }

  async function loadUsage() {
    const { key, range } = state.usage;
    const request = ++state.usage.request;
    for (const [id, which] of [['usage-hour', 'hour'], ['usage-day', 'day']]) {
      $(id).setAttribute('aria-pressed', String(range === which));
    }
    setStatus('Loading usage…');
    const slots = usageSlots(range);
    const buckets = await api('GET', keyUrl(key, '/usage',
      { granularity: range, from: timestamp(slots[0]) }));
    if (request !== state.usage.request) return; // a newer choice is on its way
    drawUsage(key, range, slots, Array.isArray(buckets) ? buckets : []);
    clearError();
    setStatus(`Usage of ${key.name} loaded`);
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
    const period = range === 'day' ? 'the last 30 days, by day' : 'the last 24 hours, by hour';

    chart.replaceChildren();
    chart.setAttribute('aria-label', `Requests of ${key.name} over ${period}: `
      + (allowed + refused ? `${allowed} allowed, ${refused} refused` : 'No requests'));

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
    switch (button.dataset.action) {
      case 'edit': return openKeyForm('edit', key, button);
      case 'rotate': return askRotate(key, button);
      case 'revoke': return askRevoke(key, button);
      case 'events': return once('events', () => showEvents(key));
      case 'usage': return once('usage', () => showUsage(key));
      default: return undefined;
    }
  }

  function start() {
    for (const dialog of document.querySelectorAll('dialog')) watchDialog(dialog);

    on($('sign-in-form'), 'submit', () => once('sign-in', () => {
      const key = $('sign-in-key').value.trim();
      if (!key) {
        $('sign-in-key').focus();
        throw new PlainError('Enter a key to sign in.');
      }
      return signIn(key);
    }));
    on($('sign-out'), 'click', signOut);
    on($('owner-form'), 'submit', () => once('owner', () => loadOwner($('owner').value.trim())));
    on($('refresh-keys'), 'click', () => once('refresh', async () => {
      setStatus('Loading keys…');
      await refreshKeys();
      clearError();
      setStatus('Keys refreshed');
    }));
    on($('new-key-button'), 'click', (event) => openKeyForm('create', null, event.currentTarget));
    on($('keys').tBodies[0], 'click', rowAction);
    on($('copy-secret'), 'click', copySecret);
    on($('secret-done'), 'click', secretDone);
    on($('events-order'), 'click', () => {
      state.events.newestFirst = !state.events.newestFirst;
      renderEvents();
    });
    on($('usage-hour'), 'click', () => {
      state.usage.range = 'hour';
      return loadUsage();
    });
    on($('usage-day'), 'click', () => {
      state.usage.range = 'day';
      return loadUsage();
    });
    for (const panel of ['events', 'usage']) {
      on($(`${panel}-close`), 'click', () => {
        $(panel).hidden = true;
        $('keys-title').focus();
      });
    }
    // A last net: whatever slipped past the handlers above is still said in words.
    window.addEventListener('error', (event) => showError(event.error || event.message));
    window.addEventListener('unhandledrejection', (event) => showError(event.reason));

    // A reload signs in again with the key this tab was given.
    const key = stored(KEY_STORAGE);
    if (key) run(() => once('sign-in', () => signIn(key)));
    else $('sign-in-key').focus();
  }

  start();
})();

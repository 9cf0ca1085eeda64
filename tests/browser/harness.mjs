// Shared harness for the headless-Chromium checks (simulcast.mjs, webtransport.mjs): browser
// launch, named checks with a TAP-like `ok - …` / `not ok - …` log, polling with an overall
// deadline, a watchdog, console collection, failure diagnostics and the final summary line.
//
//   const run = createRun({ budgetMs: 90_000, pollMs: 500 });
//   await run.main(async () => {
//     const A = await run.openPage('A');
//     await run.check('A did something', async () => 'detail');
//   }, { pageState: async (p) => { /* print '# …' lines */ } });
//   run.finish(); // prints "<passed> passed, <failed> failed", exits 0 or 1
//
// A failed check is counted and rethrown as CheckFailed, so the rest of main() is skipped
// (later checks depend on earlier ones); main() then prints diagnostics for every opened page.

import { chromium } from 'playwright-core';

// Never add --disable-quic: WebTransport runs over QUIC.
export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  '--allow-loopback-in-peer-connection',
  '--force-fieldtrials=WebRTC-LegacySimulcastLayerLimit/Disabled/',
];

export const PROBE_TIMEOUT_MS = 5_000; // one page.evaluate must not eat the whole budget
const WATCHDOG_GRACE_MS = 30_000;

/** The web demo's state on page `p` (`window.sfuDemo`), or null before it loaded. */
export const demoState = (p) =>
  p.page.evaluate(() => (window.sfuDemo
    ? { state: window.sfuDemo.state, lastError: window.sfuDemo.lastError, participantId: window.sfuDemo.participantId }
    : null));

/** Every remote track of the demo on page `p`, with fresh inbound-rtp stats. */
export const remotes = (p) => p.page.evaluate(() => window.sfuDemo.remotes());

/** Thrown (and recognised) for a failure that has already been reported as `not ok`. */
export class CheckFailed extends Error {}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`${what} took over ${ms} ms`)), ms); }),
  ]).finally(() => clearTimeout(timer));
}

/**
 * State of one run: pass/fail counters, the overall deadline (every waitFor is capped by it,
 * counted from this call), the watchdog, the browser and the pages opened in it.
 */
// `extraArgs` go to every Chromium this run launches (after CHROMIUM_ARGS).
export function createRun({ budgetMs = 90_000, pollMs = 500, extraArgs = [] } = {}) {
  const args = [...CHROMIUM_ARGS, ...extraArgs];
  const deadline = Date.now() + budgetMs;
  const pages = [];
  let browser;
  // Browsers other than the default one, by executable (e.g. a wrapper running Chromium in a
  // network namespace), launched on first use.
  const others = new Map();
  let passed = 0;
  let failed = 0;

  const summary = () => `${passed} passed, ${failed} failed`;

  // Last resort if something hangs outside a polling loop (e.g. browser launch).
  const watchdog = setTimeout(() => {
    failed++;
    console.log(`not ok - whole run exceeded ${(budgetMs + WATCHDOG_GRACE_MS) / 1000}s`);
    console.log(summary());
    process.exit(1);
  }, budgetMs + WATCHDOG_GRACE_MS);
  watchdog.unref();

  /**
   * Run one named check. `fn` returns a short detail string for the ok line.
   * A failure is counted and rethrown: later checks depend on earlier ones.
   */
  async function check(name, fn) {
    try {
      const detail = await fn();
      passed++;
      console.log(`ok - ${name}${detail ? ` (${detail})` : ''}`);
    } catch (err) {
      failed++;
      // Playwright messages carry a colored call log; keep the first line, uncolored.
      const message = String(err?.message ?? err).replace(/\x1b\[[0-9;]*m/g, '').split('\n')[0];
      console.log(`not ok - ${name}: ${message}`);
      throw new CheckFailed(message);
    }
  }

  /**
   * Poll `probe` every `pollMs` until it returns {done: true, value}, or {fatal: message} to give
   * up at once. The last `last` goes into the timeout message.
   */
  async function waitFor(what, timeoutMs, probe) {
    const start = Date.now();
    const until = Math.min(start + timeoutMs, deadline);
    let last = 'no result yet';
    for (;;) {
      try {
        const r = await withTimeout(probe(), PROBE_TIMEOUT_MS, 'probe');
        if (r?.fatal) throw new CheckFailed(`${what}: ${r.fatal}`);
        if (r?.done) return r.value;
        if (r?.last !== undefined) last = r.last;
      } catch (err) {
        if (err instanceof CheckFailed) throw err;
        last = `probe failed: ${err.message}`;
      }
      if (Date.now() >= until) {
        const waited = ((Date.now() - start) / 1000).toFixed(1);
        throw new CheckFailed(`${what}: not reached within ${waited}s (last: ${last})`);
      }
      await sleep(pollMs);
    }
  }

  /** Waits until the demo on page `p` has joined its room; fails at once on its error state. */
  async function waitJoined(p, timeoutMs) {
    return waitFor(`${p.label} joins`, timeoutMs, async () => {
      const s = await demoState(p);
      if (!s) return { last: 'window.sfuDemo not defined yet' };
      if (s.state === 'error') return { fatal: `page is in state error: ${s.lastError}` };
      return s.state === 'joined' ? { done: true, value: s } : { last: `state=${s.state}` };
    });
  }

  /** Waits until the demo on page `p` decodes more frames of a remote video within a second. */
  async function decodesVideo(p, timeoutMs) {
    return waitFor(`${p.label} decodes`, timeoutMs, async () => {
      const before = (await remotes(p)).find((r) => r.kind === 'video');
      if (!before) return { last: 'no remote video yet' };
      await sleep(1000);
      const after = (await remotes(p)).find((r) => r.kind === 'video');
      const grew = after && after.stats.framesDecoded > before.stats.framesDecoded;
      return grew ? { done: true, value: after } : { last: `framesDecoded=${after?.stats.framesDecoded}` };
    });
  }

  /**
   * A fresh browser context with one page, collecting its console; listed for diagnostics.
   * `executablePath` runs it in a Chromium of its own (launched once per path, same args).
   */
  async function openPage(label, { executablePath } = {}) {
    let owner = browser;
    if (executablePath) {
      if (!others.has(executablePath)) {
        others.set(executablePath, await chromium.launch({ executablePath, headless: true, args }));
      }
      owner = others.get(executablePath);
    }
    const context = await owner.newContext();
    const page = await context.newPage();
    const messages = [];
    page.on('console', (m) => messages.push({ error: m.type() === 'error', text: `[${m.type()}] ${m.text()}` }));
    page.on('pageerror', (e) => messages.push({ error: true, text: `[pageerror] ${e.message}` }));
    page.on('crash', () => messages.push({ error: true, text: '[crash] page crashed' }));
    const p = { label, context, page, messages };
    pages.push(p);
    return p;
  }

  /**
   * For each opened page: a header, `pageState(p)` (its own '# …' lines; if it throws,
   * "could not read page state" is printed), `extra(p)` (errors ignored), the console errors,
   * and with `lastConsoleLines` > 0 that many last console lines.
   */
  async function dumpDiagnostics({ pageState, extra, lastConsoleLines = 0 } = {}) {
    for (const p of pages) {
      console.log(`# --- page ${p.label} ---`);
      if (pageState) {
        try {
          await pageState(p);
        } catch (err) {
          console.log(`# (could not read page state: ${err.message})`);
        }
      }
      if (extra) {
        try {
          await extra(p);
        } catch { /* page gone */ }
      }
      const errors = p.messages.filter((m) => m.error);
      console.log(`# console errors (${errors.length}):`);
      for (const m of errors.slice(-30)) console.log(`#   ${m.text}`);
      if (lastConsoleLines > 0) {
        console.log('# last console lines:');
        for (const m of p.messages.slice(-lastConsoleLines)) console.log(`#   ${m.text}`);
      }
    }
  }

  /**
   * Launch Chromium and run `body`. A CheckFailed stops it (already reported); any other error
   * is counted as `not ok - unexpected error`. On either, diagnostics (see dumpDiagnostics) are
   * printed. The browser is closed in all cases; call finish() afterwards.
   */
  async function main(body, diagnostics = {}) {
    try {
      browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args });
      await body();
    } catch (err) {
      if (!(err instanceof CheckFailed)) {
        failed++;
        console.log(`not ok - unexpected error: ${err.stack ?? err}`);
      }
      await dumpDiagnostics(diagnostics);
    } finally {
      for (const b of others.values()) await b.close().catch(() => {});
      await browser?.close().catch(() => {});
    }
  }

  /** Print the summary line and exit: 0 when every check passed, 1 otherwise. */
  function finish() {
    console.log(summary());
    process.exit(failed ? 1 : 0);
  }

  return {
    check,
    waitFor,
    waitJoined,
    decodesVideo,
    openPage,
    dumpDiagnostics,
    main,
    finish,
    pages,
    deadline,
    get passed() { return passed; },
    get failed() { return failed; },
  };
}

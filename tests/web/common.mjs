// What both browser scripts share: the environment tests/webapp.rs passes (BASE: the node's
// API URL, OUT: a folder for screenshots, CHROMIUM: the browser, PLAYWRIGHT: playwright-core's
// index.mjs), the browser, and a check that throws (exit status 1) when it fails.

const { chromium } = await import(process.env.PLAYWRIGHT);

export const BASE = process.env.BASE;
export const OUT = process.env.OUT;

export function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
}

/** Debian's Chromium, headless (as root it needs --no-sandbox). */
export function launch() {
  return chromium.launch({ executablePath: process.env.CHROMIUM, args: ['--no-sandbox'] });
}

#!/usr/bin/env node
// Real-browser scenario against the FlexMeasures web UI, directly or through flexgate.
//
// Drives Debian's Chromium (/usr/bin/chromium) with playwright-core (no browser download).
// One fresh browser context (fresh profile):
//   1. log in through the login form, check where it lands
//   2. open /assets, then /assets/OWN_ASSET_ID; wait for the page's own /api/ calls; check the name shows
//   3. full-page screenshot of the own asset page
//   4. open /assets/OTHER_ASSET_ID (another tenant's) and classify what is shown
//   5. keep the session / remember_token cookies, log out through the UI (FlexMeasures 1.0.1 only has
//      a GET link to /logout, which is POST-only: 405; the script then POSTs /logout from the page,
//      like a form would), check /dashboard now redirects to /login
//   6. outside the browser, replay the OLD session cookie on /api/v3_0/assets and /api/v3_0/assets/OWN
//
// Prints ONE JSON object on stdout. Exit 0 = the whole scenario could be run (the caller judges the
// statuses); exit 1 = a step could not be performed (message on stderr, partial JSON still printed);
// exit 2 = bad arguments.
//
// Settings: command-line `--name value` / `--name=value` or environment variables (flags win):
//   --base-url        BASE_URL          e.g. https://localhost:8443 or http://127.0.0.1:5077
//   --email           EMAIL
//   --password        PASSWORD
//   --own-asset-id    OWN_ASSET_ID
//   --other-asset-id  OTHER_ASSET_ID
//   --own-asset-name  OWN_ASSET_NAME     optional; else taken from the page's /api/v3_0/assets/ID reply
//   --other-asset-name OTHER_ASSET_NAME  optional but needed for other_asset.shows_data to be exact
//   --screenshot      SCREENSHOT         default ./fm_asset.png
//   --ignore-https-errors IGNORE_HTTPS_ERRORS=1  accept the self-signed test CA (browser and replay)
//   --ca-cert         CA_CERT            PEM file to trust for the Node replay only (Chromium still
//                                        needs --ignore-https-errors for a self-signed CA)
//   --remember        REMEMBER=1         tick "Remember Me" on the login form
//   --cdn             CDN_MODE          what to do with the UI's requests to other origins (CDNs):
//                                        shim  (default) answer the known CDN URLs (jQuery, Bootstrap,
//                                              DataTables, Leaflet, vega, echarts, ...) from the npm
//                                              packages in ./node_modules, abort the rest (logo SVGs,
//                                              Google font). The page then runs its JS and makes its real
//                                              /api/ calls, as it would for a user with internet access.
//                                        block abort every other-origin request at once
//                                        live  let Chromium try them (no internet here: each DNS
//                                              failure costs up to ~5 s, and no page JS runs: "$ is not defined")
//                                        Other-origin requests never reach BASE_URL, so this does not
//                                        change what the proxy sees, only what the page can do.
//   --graphs          GRAPHS=0          skip the extra visit of /assets/OWN/graphs (default: visit it
//                                        after the screenshot; its chart /api/ calls are recorded)
//   --step-timeout-ms STEP_TIMEOUT_MS    default 20000 (every wait is bounded by this)
//   --total-timeout-ms TOTAL_TIMEOUT_MS  default 120000 (watchdog for the whole run)
//   --chromium        CHROMIUM_PATH      default /usr/bin/chromium

import { chromium } from "playwright-core";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import http from "node:http";
import { fileURLToPath } from "node:url";
import https from "node:https";

// ---------------------------------------------------------------- settings
const SETTINGS = {
  "base-url": "BASE_URL",
  email: "EMAIL",
  password: "PASSWORD",
  "own-asset-id": "OWN_ASSET_ID",
  "other-asset-id": "OTHER_ASSET_ID",
  "own-asset-name": "OWN_ASSET_NAME",
  "other-asset-name": "OTHER_ASSET_NAME",
  screenshot: "SCREENSHOT",
  "ignore-https-errors": "IGNORE_HTTPS_ERRORS",
  "ca-cert": "CA_CERT",
  remember: "REMEMBER",
  cdn: "CDN_MODE",
  graphs: "GRAPHS",
  "step-timeout-ms": "STEP_TIMEOUT_MS",
  "total-timeout-ms": "TOTAL_TIMEOUT_MS",
  chromium: "CHROMIUM_PATH",
};
const BOOL_FLAGS = new Set(["ignore-https-errors", "remember", "graphs"]);

function usage(msg) {
  process.stderr.write(
    `fm_ui.mjs: ${msg}\nusage: node fm_ui.mjs --base-url URL --email E --password P ` +
      `--own-asset-id N --other-asset-id M [--own-asset-name S] [--other-asset-name S] ` +
      `[--screenshot FILE] [--ignore-https-errors] [--ca-cert PEM] [--remember] [--cdn shim|block|live] [--graphs 0|1] ` +
      `[--step-timeout-ms MS] [--total-timeout-ms MS] [--chromium PATH]\n` +
      `(each also as env var: ${Object.values(SETTINGS).join(", ")})\n`,
  );
  process.exit(2);
}

function parseSettings(argv) {
  const cfg = {};
  for (const [flag, env] of Object.entries(SETTINGS)) {
    if (process.env[env] !== undefined && process.env[env] !== "") cfg[flag] = process.env[env];
  }
  for (let i = 0; i < argv.length; i++) {
    let a = argv[i];
    if (a === "-h" || a === "--help") usage("help");
    let value;
    if (/^[A-Z_]+=/.test(a)) {
      // also accept KEY=value positional arguments
      const [k, ...rest] = a.split("=");
      const flag = Object.keys(SETTINGS).find((f) => SETTINGS[f] === k);
      if (!flag) usage(`unknown setting ${k}`);
      cfg[flag] = rest.join("=");
      continue;
    }
    if (!a.startsWith("--")) usage(`unexpected argument ${a}`);
    a = a.slice(2);
    const eq = a.indexOf("=");
    if (eq >= 0) {
      value = a.slice(eq + 1);
      a = a.slice(0, eq);
    }
    if (!(a in SETTINGS)) usage(`unknown flag --${a}`);
    if (value === undefined) {
      if (BOOL_FLAGS.has(a) && (i + 1 >= argv.length || argv[i + 1].startsWith("--"))) value = "1";
      else value = argv[++i];
    }
    if (value === undefined) usage(`--${a} needs a value`);
    cfg[a] = value;
  }
  const truthy = (v) => v !== undefined && !["", "0", "false", "no"].includes(String(v).toLowerCase());
  for (const req of ["base-url", "email", "password", "own-asset-id", "other-asset-id"]) {
    if (!cfg[req]) usage(`missing --${req} / ${SETTINGS[req]}`);
  }
  if (cfg.cdn && !["shim", "block", "live"].includes(cfg.cdn.toLowerCase())) usage(`--cdn must be shim, block or live`);
  return {
    baseUrl: cfg["base-url"].replace(/\/+$/, ""),
    email: cfg.email,
    password: cfg.password,
    ownId: String(cfg["own-asset-id"]),
    otherId: String(cfg["other-asset-id"]),
    ownName: cfg["own-asset-name"] || null,
    otherName: cfg["other-asset-name"] || null,
    screenshot: path.resolve(cfg.screenshot || "fm_asset.png"),
    ignoreHttpsErrors: truthy(cfg["ignore-https-errors"]),
    caCert: cfg["ca-cert"] || null,
    remember: truthy(cfg.remember),
    cdn: (cfg.cdn || "shim").toLowerCase(),
    graphs: cfg.graphs === undefined ? true : truthy(cfg.graphs),
    stepTimeout: Number(cfg["step-timeout-ms"] || 20000),
    totalTimeout: Number(cfg["total-timeout-ms"] || 120000),
    chromium: cfg.chromium || "/usr/bin/chromium",
  };
}

const cfg = parseSettings(process.argv.slice(2));
const BASE = new URL(cfg.baseUrl);
const T = cfg.stepTimeout;
const t0 = Date.now();

// ---------------------------------------------------------------- result + failure handling
const result = {
  base_url: cfg.baseUrl,
  email: cfg.email,
  login_ok: false,
  landed_url: null,
  login_page: null,
  assets_list: null,
  own_asset: null,
  own_asset_ok: false,
  own_asset_graphs: null,
  api_calls: [],
  screenshot: null,
  other_asset: null,
  cookies_before_logout: null,
  logout: null,
  logout_ok: false,
  replay: null,
  same_origin_routes: [],
  external: null,
  requests: [],
  failed_requests: [],
  console_errors: [],
  page_errors: [],
  timings_ms: {},
  error: null,
};

class StepError extends Error {}
let currentStep = "setup";
let browser = null;
let userDataDir = null;
let finished = false;

function emit() {
  result.timings_ms.total = Date.now() - t0;
  process.stdout.write(JSON.stringify(result, null, 2) + "\n");
}

async function cleanup() {
  try {
    if (browser) await Promise.race([browser.close(), sleep(5000)]);
  } catch {}
  try {
    if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true });
  } catch {}
}

async function fail(msg) {
  if (finished) return;
  finished = true;
  result.error = { step: currentStep, message: msg };
  try {
    summarize();
  } catch {}
  process.stderr.write(`fm_ui.mjs: step "${currentStep}" failed: ${msg}\n`);
  await cleanup();
  emit();
  process.exit(1);
}

const watchdog = setTimeout(() => {
  fail(`whole scenario took longer than ${cfg.totalTimeout} ms`);
}, cfg.totalTimeout);

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

// Bound any promise by the step timeout, with a message that says what was awaited.
async function within(what, promise, ms = T) {
  let timer;
  try {
    return await Promise.race([
      promise,
      new Promise((_, rej) => {
        timer = setTimeout(() => rej(new StepError(`timeout after ${ms} ms waiting for ${what}`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

const stepStart = {};
function step(name) {
  currentStep = name;
  stepStart[name] = Date.now();
}
function endStep(name) {
  result.timings_ms[name] = Date.now() - stepStart[name];
}

const rel = (u) => {
  try {
    const x = new URL(u);
    return x.origin === BASE.origin ? x.pathname + x.search : u;
  } catch {
    return u;
  }
};
const pathOf = (u) => {
  try {
    return new URL(u).pathname;
  } catch {
    return u;
  }
};

// ---------------------------------------------------------------- request recording
const inflight = new Map(); // request -> record
let lastApiActivity = Date.now();

function attachRecorder(context) {
  context.on("request", (req) => {
    const rec = {
      step: currentStep,
      method: req.method(),
      url: rel(req.url()),
      type: req.resourceType(),
      status: null,
      failure: null,
      same_origin: safeOrigin(req.url()) === BASE.origin,
    };
    result.requests.push(rec);
    inflight.set(req, rec);
    if (isApi(req.url())) lastApiActivity = Date.now();
  });
  context.on("response", (resp) => {
    const rec = inflight.get(resp.request());
    if (!rec) return;
    rec.status = resp.status();
    if (rec.same_origin && pathOf(rec.url.startsWith("/") ? BASE.origin + rec.url : rec.url).startsWith("/api/")) {
      // the request headers as sent on the wire (besides the cookie, whose value is not recorded)
      resp.request().allHeaders().then(
        (h) => {
          rec.headers = {};
          for (const k of ["accept", "content-type", "x-requested-with", "authorization", "cookie", "origin", "sec-fetch-mode", "sec-fetch-site"]) {
            if (h[k] === undefined) continue;
            rec.headers[k] = k === "cookie" ? h[k].split(/;\s*/).map((c) => c.split("=")[0]).join("; ") : k === "authorization" ? "(present)" : h[k];
          }
        },
        () => {},
      );
    }
  });
  context.on("requestfinished", (req) => {
    inflight.delete(req);
    if (isApi(req.url())) lastApiActivity = Date.now();
  });
  context.on("requestfailed", (req) => {
    const rec = inflight.get(req);
    if (rec) rec.failure = req.failure()?.errorText || "failed";
    inflight.delete(req);
    if (isApi(req.url())) lastApiActivity = Date.now();
  });
}
function safeOrigin(u) {
  try {
    return new URL(u).origin;
  } catch {
    return null;
  }
}
function isApi(u) {
  return safeOrigin(u) === BASE.origin && pathOf(u).startsWith("/api/");
}

// Wait until no same-origin /api/ request is in flight and none started/ended for `quietMs`.
// The quiet time counts from the call too, so a call the page has not started yet gets a chance.
async function waitApiQuiet(quietMs = 1000, ms = T) {
  const start = Date.now();
  const deadline = start + ms;
  for (;;) {
    const busy = [...inflight.keys()].some((r) => isApi(r.url()));
    if (!busy && Date.now() - Math.max(lastApiActivity, start) >= quietMs) return;
    if (Date.now() > deadline) {
      const pending = [...inflight.keys()].filter((r) => isApi(r.url())).map((r) => rel(r.url()));
      throw new StepError(`timeout after ${ms} ms waiting for the page's /api/ calls (pending: ${pending.join(", ") || "none"})`);
    }
    await sleep(100);
  }
}

// Wait (bounded, not fatal) until the current step has seen a finished or failed same-origin
// request whose path starts with `prefix`. Returns whether it did.
async function waitApiCall(prefix, ms = T) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (result.requests.some((r) => r.step === currentStep && r.same_origin && r.url.startsWith(prefix) && (r.status !== null || r.failure) && !inflightHas(r)))
      return true;
    await sleep(100);
  }
  return false;
}
function inflightHas(rec) {
  for (const v of inflight.values()) if (v === rec) return true;
  return false;
}

// Best-effort wait for the load event (CDN failures normally end fast; bounded anyway).
async function settle(page, ms = T) {
  try {
    await page.waitForLoadState("load", { timeout: ms });
  } catch {
    result.console_errors.push({ step: currentStep, text: `load event not reached within ${ms} ms` });
  }
}

async function goto(page, url) {
  const resp = await within(`navigation to ${url}`, page.goto(url, { waitUntil: "domcontentloaded", timeout: T }));
  if (!resp) throw new StepError(`no response for ${url}`);
  return resp;
}

function redirectChain(resp) {
  const chain = [];
  let req = resp.request();
  while (req) {
    chain.unshift(req);
    req = req.redirectedFrom();
  }
  return chain.map((r) => rel(r.url()));
}

async function bodyText(page) {
  try {
    return await within("page text", page.evaluate(() => document.body ? document.body.innerText : ""), 5000);
  } catch {
    return "";
  }
}

async function isLoggedInPage(page) {
  // Every logged-in FlexMeasures page has the navbar link to the user's own page.
  return (await page.locator('a[href="/logged-in-user"]').count()) > 0;
}

// ---------------------------------------------------------------- replay outside the browser
function rawGet(url, cookieHeader) {
  const u = new URL(url);
  const mod = u.protocol === "https:" ? https : http;
  const opts = {
    method: "GET",
    headers: { Accept: "application/json", ...(cookieHeader ? { Cookie: cookieHeader } : {}) },
    timeout: T,
  };
  if (u.protocol === "https:") {
    if (cfg.caCert) opts.ca = fs.readFileSync(cfg.caCert);
    if (cfg.ignoreHttpsErrors) opts.rejectUnauthorized = false;
  }
  return new Promise((resolve) => {
    const req = mod.request(u, opts, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (c) => {
        if (body.length < 2000) body += c;
      });
      res.on("end", () =>
        resolve({ status: res.statusCode, location: res.headers.location || null, body: body.slice(0, 300) }),
      );
    });
    req.on("timeout", () => req.destroy(new Error(`timeout after ${T} ms`)));
    req.on("error", (e) => resolve({ status: null, error: String(e.message || e) }));
    req.end();
  });
}

// ---------------------------------------------------------------- CDN shim (offline)
const NM = path.join(path.dirname(fileURLToPath(import.meta.url)), "node_modules");
const MIME = {
  ".js": "application/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".json": "application/json",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".gif": "image/gif",
  ".woff2": "font/woff2",
  ".woff": "font/woff",
  ".ttf": "font/ttf",
  ".eot": "application/vnd.ms-fontobject",
  ".otf": "font/otf",
};
function pkgVersion(dir) {
  try {
    return JSON.parse(fs.readFileSync(path.join(dir, "package.json"), "utf8")).version;
  } catch {
    return null;
  }
}
// npm package dir for name@ver: an alias dir "name-ver" (several versions are on the pages) or "name".
function pkgDir(name, ver) {
  for (const cand of ver ? [`${name}-${ver}`, name] : [name]) {
    const dir = path.join(NM, cand);
    const v = pkgVersion(dir);
    if (!v) continue;
    if (!ver || v === ver || v.startsWith(ver + ".")) return dir;
  }
  return null;
}
function fileIn(dir, rel) {
  if (!dir) return null;
  if (!rel) {
    try {
      const pj = JSON.parse(fs.readFileSync(path.join(dir, "package.json"), "utf8"));
      rel = pj.jsdelivr || pj.unpkg || (typeof pj.browser === "string" ? pj.browser : null) || pj.main;
    } catch {
      return null;
    }
  }
  const f = path.join(dir, rel);
  if (!f.startsWith(dir + path.sep)) return null;
  if (fs.existsSync(f) && fs.statSync(f).isFile()) return f;
  // jsDelivr minifies on the fly: X.min.js is served from X.js when the package has no X.min.js
  const m = f.match(/^(.*)\.min\.(js|css)$/);
  if (m && fs.existsSync(`${m[1]}.${m[2]}`)) return `${m[1]}.${m[2]}`;
  return null;
}
// "@scope/name@1.2.3/rest" or "name@5/rest" or "name/rest"
function npmSpec(p) {
  const m = p.match(/^((?:@[^/@]+\/)?[^/@]+)(?:@([^/]+))?(?:\/(.*))?$/);
  return m ? fileIn(pkgDir(m[1], m[2] || null), m[3] || "") : null;
}
function shimFile(u) {
  const p = decodeURIComponent(u.pathname);
  let m;
  switch (u.hostname) {
    case "cdn.jsdelivr.net":
      return p.startsWith("/npm/") ? npmSpec(p.slice(5)) : null;
    case "unpkg.com":
      return npmSpec(p.slice(1));
    case "ajax.aspnetcdn.com":
      m = p.match(/^\/ajax\/jQuery\/jquery-([\d.]+)(\.min)?\.js$/);
      return m ? fileIn(pkgDir("jquery", m[1]), `dist/jquery${m[2] || ""}.js`) : null;
    case "cdnjs.cloudflare.com": {
      m = p.match(/^\/ajax\/libs\/([^/]+)\/([^/]+)\/(.+)$/);
      if (!m) return null;
      const sub = { "font-awesome": "", floatthead: "dist/", jstimezonedetect: "dist/" }[m[1]];
      return sub === undefined ? null : fileIn(pkgDir(m[1], m[2]), sub + m[3]);
    }
    case "cdn.datatables.net": {
      if ((m = p.match(/^\/buttons\/([\d.]+)\/(.+)$/))) return fileIn(pkgDir("datatables.net-buttons-bs5", m[1]), m[2]);
      if ((m = p.match(/^\/plug-ins\/([\d.]+)\/(.+)$/))) return fileIn(pkgDir("datatables.net-plugins", m[1]), m[2]);
      if ((m = p.match(/^\/1\.10\.\d+\/images\/(.+)$/))) return fileIn(pkgDir("datatables.net-dt", null), `images/${m[1]}`);
      if ((m = p.match(/^\/1\.10\.\d+\/css\/(.+)$/))) return fileIn(pkgDir("datatables.net-dt", null), `css/${m[1]}`);
      if ((m = p.match(/^\/([\d.]+)\/js\/(dataTables\.bootstrap5.*)$/))) return fileIn(pkgDir("datatables.net-bs5", m[1]), `js/${m[2]}`);
      if ((m = p.match(/^\/([\d.]+)\/js\/(.+)$/))) return fileIn(pkgDir("datatables.net", m[1]), `js/${m[2]}`);
      return null;
    }
    case "d3js.org":
      m = p.match(/^\/d3\.v(\d+)(\.min)?\.js$/);
      return m ? fileIn(pkgDir("d3", m[1]), `dist/d3${m[2] || ""}.js`) : null;
    default:
      return null;
  }
}
const external = new Map(); // url -> "shim" | "blocked" | "unmapped"
async function installCdnPolicy(context) {
  if (cfg.cdn === "live") return;
  if (cfg.cdn === "shim" && !fs.existsSync(path.join(NM, "jquery"))) {
    throw new StepError(`--cdn shim needs the npm packages: run "npm ci" in ${path.dirname(NM)} (or use --cdn block)`);
  }
  await context.route(
    (u) => u.origin !== BASE.origin && (u.protocol === "http:" || u.protocol === "https:"),
    async (route) => {
      const url = route.request().url();
      const file = cfg.cdn === "shim" ? shimFile(new URL(url)) : null;
      if (!file) {
        external.set(url, cfg.cdn === "shim" ? "unmapped" : "blocked");
        return route.abort("internetdisconnected");
      }
      external.set(url, "shim");
      return route.fulfill({
        status: 200,
        headers: {
          "Content-Type": MIME[path.extname(file)] || "application/octet-stream",
          "Access-Control-Allow-Origin": "*",
          "Cache-Control": "max-age=3600",
        },
        body: fs.readFileSync(file),
      });
    },
  );
}

// ---------------------------------------------------------------- scenario
async function main() {
  step("launch");
  userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "fm-ui-profile-"));
  // launchPersistentContext gives exactly one fresh profile dir that we own and delete afterwards.
  const context = await within(
    "Chromium start",
    chromium.launchPersistentContext(userDataDir, {
      executablePath: cfg.chromium,
      headless: true,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
      ignoreHTTPSErrors: cfg.ignoreHttpsErrors,
      viewport: { width: 1400, height: 900 },
      timeout: T,
    }),
    30000,
  );
  browser = context; // close() on a persistent context closes the browser
  context.setDefaultTimeout(T);
  context.setDefaultNavigationTimeout(T);
  attachRecorder(context);
  await installCdnPolicy(context);
  const page = context.pages()[0] || (await context.newPage());
  const seenConsole = new Set();
  page.on("console", (m) => {
    if (m.type() !== "error") return;
    const text = m.text().slice(0, 300);
    // the browser logs every aborted/failed other-origin load; those are in `external` already
    if (/ERR_INTERNET_DISCONNECTED|ERR_NAME_NOT_RESOLVED/.test(text)) return;
    const key = currentStep + text;
    if (seenConsole.has(key) || result.console_errors.length >= 50) return;
    seenConsole.add(key);
    result.console_errors.push({ step: currentStep, text });
  });
  page.on("pageerror", (e) => {
    if (result.page_errors.length < 50) result.page_errors.push({ step: currentStep, text: String(e.message || e).slice(0, 300) });
  });
  endStep("launch");

  // 1. login ------------------------------------------------------------------------------------
  step("login");
  const loginResp = await goto(page, `${cfg.baseUrl}/login`);
  result.login_page = { status: loginResp.status(), url: rel(page.url()) };
  const form = page.locator('form[name="login_user_form"]');
  try {
    await form.waitFor({ state: "attached", timeout: T });
  } catch {
    throw new StepError(`login form (form[name="login_user_form"]) not found on ${page.url()} (status ${loginResp.status()})`);
  }
  await form.locator('input[name="email"]').fill(cfg.email);
  await form.locator('input[name="password"]').fill(cfg.password);
  if (cfg.remember) await form.locator('input[name="remember"]').check();
  // Note: the page has two id="submit" elements (a div and the input), so select by form + type.
  const [navResp] = await within(
    "login POST + redirect",
    Promise.all([
      page.waitForNavigation({ waitUntil: "domcontentloaded", timeout: T }),
      form.locator('input[type="submit"]').click({ timeout: T }),
    ]),
  );
  await settle(page);
  result.landed_url = rel(page.url());
  const loginChain = navResp ? redirectChain(navResp) : [];
  const loggedIn = await isLoggedInPage(page);
  result.login_ok = loggedIn && !pathOf(page.url()).startsWith("/login");
  result.login = {
    post_chain: loginChain,
    final_status: navResp ? navResp.status() : null,
    title: await page.title(),
    navbar_user_link: loggedIn,
  };
  if (!result.login_ok) {
    const text = (await bodyText(page)).replace(/\s+/g, " ").slice(0, 300);
    result.login.page_text = text;
    throw new StepError(`not logged in after submitting the login form: landed on ${page.url()}: ${text}`);
  }
  endStep("login");

  // 2. assets list + own asset ------------------------------------------------------------------
  step("assets_list");
  const listResp = await goto(page, `${cfg.baseUrl}/assets`);
  await settle(page);
  // With working page JS (CDN shim) the table is filled by an XHR to /api/v3_0/assets: wait for it.
  const listXhrSeen = cfg.cdn === "shim" ? await waitApiCall("/api/v3_0/assets?") : null;
  await waitApiQuiet(500);
  result.assets_list = {
    status: listResp.status(),
    api_xhr_seen: listXhrSeen,
    url: rel(page.url()),
    table_present: (await page.locator("#assetTable").count()) > 0,
    rows_rendered: await page.locator("#assetTable tbody tr").count(),
  };
  endStep("assets_list");

  step("own_asset");
  const ownResp = await goto(page, `${cfg.baseUrl}/assets/${cfg.ownId}`);
  await settle(page);
  await waitApiQuiet(1000);
  const ownApi = result.requests.filter((r) => r.step === "own_asset" && pathOf(BASE.origin + r.url).startsWith("/api/"));
  let ownName = cfg.ownName;
  if (!ownName) {
    // Take the name from the page's own /api/v3_0/assets/ID reply if it made one, else ask with the
    // browser's cookies.
    try {
      const r = await within(
        "asset name lookup",
        context.request.get(`${cfg.baseUrl}/api/v3_0/assets/${cfg.ownId}`, { timeout: T, failOnStatusCode: false }),
      );
      if (r.ok()) ownName = (await r.json()).name || null;
    } catch {}
  }
  const ownText = await bodyText(page);
  const ownHtml = await page.content();
  result.own_asset = {
    status: ownResp.status(),
    chain: redirectChain(ownResp),
    url: rel(page.url()),
    title: await page.title(),
    name: ownName,
    name_shown: ownName ? ownText.includes(ownName) || ownHtml.includes(ownName) : null,
    name_in_visible_text: ownName ? ownText.includes(ownName) : null,
    api_calls: ownApi.map((r) => ({ method: r.method, url: r.url, status: r.status, failure: r.failure })),
  };
  result.own_asset_ok =
    ownResp.status() === 200 &&
    !!result.own_asset.name_shown &&
    ownApi.every((r) => r.status !== null && r.status >= 200 && r.status < 300);
  // (own_asset_ok is refined after the graphs step, whose chart /api/ calls belong to the asset too)
  endStep("own_asset");

  // 3. screenshot -------------------------------------------------------------------------------
  step("screenshot");
  fs.mkdirSync(path.dirname(cfg.screenshot), { recursive: true });
  await within("screenshot", page.screenshot({ path: cfg.screenshot, fullPage: true, timeout: T }));
  result.screenshot = cfg.screenshot;
  endStep("screenshot");

  // 3b. (extra) the asset's graphs page: its chart /api/ calls ---------------------------------
  if (cfg.graphs) {
    step("own_asset_graphs");
    const gResp = await goto(page, `${cfg.baseUrl}/assets/${cfg.ownId}/graphs`);
    await settle(page);
    const chartSeen = cfg.cdn === "shim" ? await waitApiCall(`/api/v3_0/assets/${cfg.ownId}/chart_data`) : null;
    await waitApiQuiet(1000);
    const gShot = cfg.screenshot.replace(/(\.png)?$/i, "-graphs.png");
    await within("graphs screenshot", page.screenshot({ path: gShot, fullPage: true, timeout: T }));
    const gApi = result.requests.filter((r) => r.step === "own_asset_graphs" && r.same_origin && r.url.startsWith("/api/"));
    result.own_asset_graphs = {
      status: gResp.status(),
      url: rel(page.url()),
      title: await page.title(),
      chart_data_call_seen: chartSeen,
      // the "fast chart" (default on) draws with echarts on a <canvas>; the classic chart is vega-embed
      canvases: await page.locator("canvas").count(),
      vega_embeds: await page.locator(".vega-embed").count(),
      screenshot: gShot,
      api_calls: gApi.map((r) => ({ method: r.method, url: r.url, status: r.status, failure: r.failure })),
      api_all_2xx: gApi.every((r) => r.status !== null && r.status >= 200 && r.status < 300),
    };
    const assetApiOk = gApi.some((r) => r.url.startsWith(`/api/v3_0/assets/${cfg.ownId}`) && r.status === 200);
    result.own_asset_graphs.asset_api_loaded = assetApiOk;
    // With the CDN shim the page's JS runs and must have fetched the asset over /api/; without it
    // (block/live) no page JS runs here, so no /api/ call is expected.
    result.own_asset_ok = result.own_asset_ok && result.own_asset_graphs.api_all_2xx && (cfg.cdn !== "shim" || assetApiOk);
    endStep("own_asset_graphs");
  }

  // 4. other tenant's asset ---------------------------------------------------------------------
  step("other_asset");
  const otherResp = await goto(page, `${cfg.baseUrl}/assets/${cfg.otherId}`);
  await settle(page);
  await waitApiQuiet(1000);
  const otherText = await bodyText(page);
  const otherHtml = await page.content();
  const otherStatus = otherResp.status();
  const otherUrl = rel(page.url());
  let kind;
  const compact = otherText.replace(/\s+/g, " ");
  if (pathOf(page.url()).startsWith("/login")) kind = "login_redirect";
  else if (/You cannot be authorized for this content or functionality/i.test(compact))
    kind = otherStatus === 403 ? "fm_403_json" : "fm_not_authorized_message";
  else if (otherStatus === 403) kind = "403_other";
  else if (otherStatus === 404) kind = "404";
  else if (otherStatus >= 400) kind = `error_${otherStatus}`;
  else if (/not allowed|forbidden|not authori[sz]ed|permission/i.test(compact)) kind = "not_allowed_page";
  else if (await isLoggedInPage(page)) kind = "asset_page";
  else kind = "other";
  const otherPrefix = `/assets/${cfg.otherId}`;
  result.other_asset = {
    status: otherStatus,
    chain: redirectChain(otherResp),
    url: otherUrl,
    page_kind: kind,
    shows_data: cfg.otherName ? otherText.includes(cfg.otherName) || otherHtml.includes(cfg.otherName) : null,
    name_checked: cfg.otherName,
    // name-independent hint: does the page link to the other asset's own sub-pages (the asset nav)?
    links_to_asset_pages: (await page.locator(`a[href^="${otherPrefix}/"]`).count()) > 0,
    text_excerpt: compact.slice(0, 200),
    api_calls: result.requests
      .filter((r) => r.step === "other_asset" && pathOf(BASE.origin + r.url).startsWith("/api/"))
      .map((r) => ({ method: r.method, url: r.url, status: r.status, failure: r.failure })),
  };
  endStep("other_asset");

  // 5. cookies + logout -------------------------------------------------------------------------
  step("logout");
  const cookies = await context.cookies(cfg.baseUrl);
  const sessionCookie = cookies.find((c) => c.name === "session") || null;
  const rememberCookie = cookies.find((c) => c.name === "remember_token") || null;
  result.cookies_before_logout = cookies.map((c) => ({
    name: c.name,
    value_len: c.value.length,
    value_prefix: c.value.slice(0, 12),
    httpOnly: c.httpOnly,
    secure: c.secure,
    sameSite: c.sameSite,
    path: c.path,
    domain: c.domain,
    expires: c.expires,
  }));
  if (!sessionCookie) throw new StepError("no session cookie in the browser context after login");
  result.session_cookie = sessionCookie.value;
  result.remember_token = rememberCookie ? rememberCookie.value : null;

  const logout = { ui_control: null, ui_status: null, ui_url: null, method_used: null, post_status: null };
  // FlexMeasures puts its "Log out" control on /logged-in-user (the navbar user link).
  await goto(page, `${cfg.baseUrl}/logged-in-user`);
  await settle(page);
  const ctl = page.locator('a[href$="/logout"], form[action$="/logout"] [type="submit"], button:has-text("Log out")').first();
  if ((await ctl.count()) === 0) throw new StepError(`no logout control on ${page.url()}`);
  const ctlInfo = await ctl.evaluate((el) => ({
    tag: el.tagName.toLowerCase(),
    text: el.textContent.trim(),
    href: el.getAttribute("href"),
    form_method: el.form ? el.form.method : null,
    form_action: el.form ? el.form.getAttribute("action") : null,
  }));
  logout.ui_control = ctlInfo;
  const [uiResp] = await within(
    "logout click",
    Promise.all([page.waitForNavigation({ waitUntil: "domcontentloaded", timeout: T }), ctl.click({ timeout: T })]),
  );
  logout.ui_status = uiResp ? uiResp.status() : null;
  logout.ui_method = uiResp ? uiResp.request().method() : null;
  logout.ui_url = rel(page.url());
  logout.ui_chain = uiResp ? redirectChain(uiResp) : [];
  // Did the UI control log us out?
  let probe = await goto(page, `${cfg.baseUrl}/dashboard`);
  let loggedOutByUi = pathOf(page.url()).startsWith("/login");
  logout.logged_out_by_ui_control = loggedOutByUi;
  if (loggedOutByUi) {
    logout.method_used = `ui ${ctlInfo.tag} (${logout.ui_method})`;
  } else {
    // The UI control did not work (FlexMeasures 1.0.1: GET /logout -> 405). Log out the way the
    // server wants it: a browser form POST to /logout (SECURITY_LOGOUT_CSRF is off, no token needed).
    logout.method_used = "form POST /logout (fallback: the UI control did not log out)";
    const [postResp] = await within(
      "logout form POST",
      Promise.all([
        page.waitForNavigation({ waitUntil: "domcontentloaded", timeout: T }),
        page.evaluate(() => {
          const f = document.createElement("form");
          f.method = "POST";
          f.action = "/logout";
          document.body.appendChild(f);
          f.submit();
        }),
      ]),
    );
    logout.post_status = postResp ? postResp.status() : null;
    logout.post_chain = postResp ? redirectChain(postResp) : [];
    probe = await goto(page, `${cfg.baseUrl}/dashboard`);
  }
  logout.dashboard_after = { chain: redirectChain(probe), url: rel(page.url()), status: probe.status() };
  result.logout_ok = pathOf(page.url()).startsWith("/login");
  const after = await context.cookies(cfg.baseUrl);
  logout.cookies_after = after.map((c) => ({ name: c.name, value_len: c.value.length, changed: c.value !== (cookies.find((o) => o.name === c.name) || {}).value }));
  result.logout = logout;
  endStep("logout");
  await settle(page, 5000);

  // 6. replay the old cookies outside the browser -----------------------------------------------
  step("replay");
  const listUrl = `${cfg.baseUrl}/api/v3_0/assets`;
  const oneUrl = `${cfg.baseUrl}/api/v3_0/assets/${cfg.ownId}`;
  const sess = `session=${sessionCookie.value}`;
  const a = await rawGet(listUrl, sess);
  const b = await rawGet(oneUrl, sess);
  result.replay = {
    cookie: "session (old value, from before logout)",
    assets_list_status: a.status,
    own_asset_status: b.status,
    assets_list: a,
    own_asset: b,
  };
  if (rememberCookie) {
    const rem = `remember_token=${rememberCookie.value}`;
    const c = await rawGet(listUrl, rem);
    const d = await rawGet(oneUrl, rem);
    result.replay.remember_token_only = { assets_list_status: c.status, own_asset_status: d.status, assets_list: c, own_asset: d };
  }
  if (a.status === null || b.status === null)
    throw new StepError(`replay request failed: ${a.error || b.error}`);
  endStep("replay");
}

// summary lists (also on failure) -------------------------------------------------------------
function summarize() {
  for (const r of result.requests) if (!r.same_origin) r.cdn = external.get(r.url) || cfg.cdn;
  const ext = result.requests.filter((r) => !r.same_origin);
  const own = result.requests.filter((r) => r.same_origin);
  const routes = new Map();
  for (const r of own) {
    const key = `${r.method} ${r.url.split("?")[0]}`;
    const e = routes.get(key) || { route: key, statuses: [], steps: [] };
    const st = r.status ?? r.failure;
    if (!e.statuses.includes(st)) e.statuses.push(st);
    if (!e.steps.includes(r.step)) e.steps.push(r.step);
    routes.set(key, e);
  }
  result.same_origin_routes = [...routes.values()];
  const failedExt = new Map();
  for (const r of ext.filter((r) => r.failure)) failedExt.set(r.url, r.failure);
  result.external = {
    mode: cfg.cdn,
    requests: ext.length,
    shimmed: [...new Set(ext.filter((r) => r.cdn === "shim").map((r) => r.url))],
    failed: [...failedExt].map(([url, error]) => ({ url, error })),
  };
  result.api_calls = own
    .filter((r) => r.url.startsWith("/api/"))
    .map((r) => ({ step: r.step, method: r.method, url: r.url, status: r.status, failure: r.failure, headers: r.headers }));
  // the full list, same-origin only (other origins are summarised in `external`)
  result.requests = own.map(({ same_origin, cdn, ...r }) => r);
  // same-origin requests that failed or got >= 400 (other-origin ones are in external.failed)
  result.failed_requests = result.requests.filter((r) => r.failure || (r.status !== null && r.status >= 400));
}

try {
  await main();
  summarize();
  clearTimeout(watchdog);
  finished = true;
  await cleanup();
  emit();
  process.exit(0);
} catch (e) {
  // Playwright errors carry a multi-line call log; its first lines say what failed.
  const msg = e instanceof StepError
    ? e.message
    : String((e && e.message) || e).replace(/\x1b\[[0-9;]*m/g, "").split("\n").slice(0, 3).join(" | ");
  await fail(msg);
}

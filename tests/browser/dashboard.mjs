// Drives `galley dashboard` in Debian's headless chromium through puppeteer-core (never a
// downloaded browser) and prints what it saw as one JSON object; tests/lua/dashboard_browser_spec.lua
// starts the fixture and asserts on it. Input: a JSON object in argv[2]:
//   {url, provider, instances: [id1, id2], pm2: "ticker", tmux: "shell", artifacts: DIR, chromium?}
import puppeteer from "puppeteer-core";
import path from "node:path";

const cfg = JSON.parse(process.argv[2]);
const out = { steps: [] };
const root = new URL(cfg.url).origin;
const port = new URL(cfg.url).port;
const [id1, id2] = Array.isArray(cfg.instances) ? cfg.instances : [];
const P = encodeURIComponent(cfg.provider);

function step(name, data) { out.steps.push(name); Object.assign(out, data || {}); }
const shot = (page, name) => page.screenshot({ path: path.join(cfg.artifacts, `${cfg.provider}-${name}.png`), fullPage: true });
const logLines = (page) => page.$eval("#log", (e) => e.textContent.split("\n").filter((l) => l !== ""));

const browser = await puppeteer.launch({
  executablePath: cfg.chromium || "/usr/bin/chromium",
  headless: true,
  // a host name that resolves to 127.0.0.1: what a DNS-rebinding page would use
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--host-resolver-rules=MAP rebind.test 127.0.0.1",
    "--no-first-run", "--no-default-browser-check"],
  defaultViewport: { width: 1400, height: 900 },
});
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(90000);
  if (cfg.mode === "fanout") {
    // A live recipe.parallel fan-out: its run is listed as running with all its instances.
    await page.goto(cfg.url);
    await page.waitForFunction((run, n) => {
      const tr = document.querySelector(`#runs tr[data-run="${run}"]`);
      return tr && tr.children[3].textContent === "running" && tr.children[5].textContent === String(n)
        && document.querySelectorAll(`table.instances td.health.mem`).length >= n;
    }, { timeout: 120000 }, cfg.run, cfg.count);
    out.fanout_rows = await page.$$eval("table.instances tr[data-instance]", (trs) => trs.length);
    await shot(page, "fanout");
    step("fanout");
    throw null; // done: skip the fixture steps
  }
  page.on("dialog", (d) => { out.dialogs = (out.dialogs || 0) + 1; d.accept(); });

  // No token: 403. A foreign Host (a name that resolves to 127.0.0.1): 403.
  let r = await page.goto(root + "/");
  step("no-token", { no_token_status: r.status() });
  r = await page.goto(`http://rebind.test:${port}/?token=${new URL(cfg.url).searchParams.get("token")}`);
  step("foreign-host", { foreign_host_status: r.status() });

  // Sign in with the printed URL: the cookie is set, the overview lists both instances with health.
  r = await page.goto(cfg.url);
  step("signed-in", { signed_in_status: r.status(), url_after: page.url() });
  const row = (id) => `table.instances tr[data-instance="${id}"]`;
  await page.waitForFunction((sels) => sels.every((s) => {
    const m = document.querySelector(s + " td.health.mem");
    return m && m.textContent.includes("%");
  }), { timeout: 120000 }, [row(id1), row(id2)]);
  out.health = {};
  for (const id of [id1, id2]) {
    out.health[id] = await page.$eval(row(id), (tr) => Object.fromEntries(
      [...tr.querySelectorAll("td.health")].map((td) => [td.classList[1], td.textContent.trim()])));
  }
  out.cookie_http_only = (await page.cookies()).some((c) => c.name === `galley_dashboard_${port}` && c.httpOnly && c.sameSite === "Strict");
  out.cookie_visible_to_js = await page.evaluate(() => document.cookie.includes("galley_dashboard"));
  await shot(page, "overview");
  step("overview");

  // A POST from the page without the CSRF token: 403 (the cookie alone is not enough).
  out.post_without_csrf = await page.evaluate(async (body) => (await fetch("/api/session/keys", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) })).status,
  { provider: cfg.provider, id: id1, name: cfg.tmux, manager: "tmux", text: "echo should-not-run", enter: true });

  // The instance's sessions.
  await page.goto(`${root}/#/instance/${P}/${encodeURIComponent(id1)}`);
  await page.waitForSelector(`tr[data-session="${cfg.pm2}"][data-manager="pm2"]`);
  await page.waitForSelector(`tr[data-session="${cfg.tmux}"][data-manager="tmux"]`);
  await shot(page, "sessions");
  step("sessions");

  // The PM2 session's live log: new lines arrive while we watch.
  await page.goto(`${root}/#/session/${P}/${encodeURIComponent(id1)}/pm2/${encodeURIComponent(cfg.pm2)}`);
  await page.waitForFunction(() => document.querySelector("#log") && document.querySelector("#log").textContent.includes("\n"));
  const before = await logLines(page);
  const t0 = Date.now();
  await page.waitForFunction((n) => document.querySelector("#log").textContent.split("\n").filter((l) => l).length >= n + 3,
    { timeout: 60000 }, before.length);
  out.three_new_lines_ms = Date.now() - t0;
  out.log_lines = await logLines(page);
  await shot(page, "pm2-log");
  // A reload resumes from the last event id: the first line shown follows the last one seen.
  // Close the stream and read what is shown in one step (no event can land in between), then reload.
  const seen = await page.evaluate(() => {
    state.source.close();
    return document.querySelector("#log").textContent.split("\n").filter((l) => l !== "");
  });
  await page.reload();
  await page.waitForFunction(() => document.querySelector("#log") && document.querySelector("#log").textContent.includes("\n"));
  out.log_after_reload = await logLines(page);
  out.log_before_reload_last = seen[seen.length - 1];
  step("pm2-log");

  // The tmux session: its screen with colours, and keys typed into it.
  await page.goto(`${root}/#/session/${P}/${encodeURIComponent(id1)}/tmux/${encodeURIComponent(cfg.tmux)}`);
  await page.waitForSelector("#screen");
  await page.waitForSelector("#keys");
  const marker = "galley-keys-" + Math.floor(Math.random() * 1e9);
  await page.type("#keys", `printf '\\033[31m%s\\033[0m\\n' ${marker}`);
  await page.click("#keys-form button[type=submit]");
  const t1 = Date.now();
  await page.waitForFunction((m) => [...document.querySelectorAll("#screen span")]
    .some((s) => s.textContent.includes(m) && s.getAttribute("style").includes("color")), { timeout: 60000 }, marker);
  out.keys_shown_ms = Date.now() - t1;
  out.marker = marker;
  out.screen_text = await page.$eval("#screen", (e) => e.textContent);
  out.screen_has_should_not_run = out.screen_text.includes("should-not-run");
  await shot(page, "tmux");
  step("tmux");

  // Stop the second instance from the overview (confirmed): its row goes away.
  await page.goto(`${root}/#/`);
  await page.waitForSelector(`${row(id2)} button.stop`);
  await page.click(`${row(id2)} button.stop`);
  await page.waitForFunction((s) => !document.querySelector(s), { timeout: 120000 }, row(id2));
  out.stopped_row_gone = true;
  out.first_still_listed = !!(await page.$(row(id1)));
  await shot(page, "after-stop");
  step("stop");
} catch (e) {
  if (e !== null) out.error = String(e && e.stack || e);
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(out) + "\n");

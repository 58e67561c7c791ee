// The console's flows in headless Chromium (Debian's /usr/bin/chromium,
// driven by Playwright), logging in at the real OpenID provider, with
// axe-core on every screen and a keyboard walk of every screen.
//
// Started by `tests/console.rs` with:
//   CONSOLE_URL   https://127.0.0.1:PORT (the admin listener)
//   CHECK_URL     http://127.0.0.1:PORT (the check listener)
//   CHILD, MOTHER Skatteverket's test numbers of the test family
//   SCREENSHOTS   where each screen's PNG goes (under target/)
//   USER_DATA_DIR a fresh, empty Chromium profile
// Prints one line per step and `all flows passed` at the end; exits 1 on
// the first failure.

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const require = createRequire(import.meta.url);
const axeSource = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const CONSOLE = env('CONSOLE_URL');
const CHECK = env('CHECK_URL');
const CHILD = env('CHILD');
const MOTHER = env('MOTHER');
const SHOTS = env('SCREENSHOTS');
const UNIT = 'SE2321000131-E000000000001';

function assert(ok, what) {
  if (!ok) throw new Error(`assertion failed: ${what}`);
}

const log = (s) => console.log(s);

async function check(actor, subject, service = 'journal') {
  const r = await fetch(`${CHECK}/v1/check`, {
    method: 'POST',
    body: JSON.stringify({ actor, subject, service }),
  });
  return r.json();
}

// axe-core: no serious or critical violation, every field labelled.
async function accessible(page, name) {
  await page.addScriptTag({ content: axeSource });
  const result = await page.evaluate(async () => {
    // eslint-disable-next-line no-undef
    const r = await axe.run(document, { resultTypes: ['violations'] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.map((n) => n.target.join(' ')) }));
  });
  const bad = result.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  assert(bad.length === 0, `${name}: axe found ${JSON.stringify(bad)}`);
  const unlabelled = await page.evaluate(() =>
    [...document.querySelectorAll('input:not([type=hidden]), textarea, select')]
      .filter((el) => !(el.labels && el.labels.length > 0))
      .map((el) => el.name || el.id),
  );
  assert(unlabelled.length === 0, `${name}: fields without a label: ${unlabelled}`);
  return result.length;
}

// Tab through the page: every link, button and field gets the focus.
async function keyboard(page, name) {
  const wanted = await page.evaluate(() => {
    const all = [...document.querySelectorAll('a[href], button, input:not([type=hidden]), textarea, select')];
    return all
      .filter((el) => !el.disabled && el.offsetParent !== null)
      .map((el, i) => {
        el.dataset.kbd = String(i);
        return String(i);
      });
  });
  // Radio groups take one tab stop: count a group as reached when any of it is.
  const groups = await page.evaluate(() => {
    const g = {};
    for (const el of document.querySelectorAll('input[type=radio]')) {
      (g[el.name] ||= []).push(el.dataset.kbd);
    }
    return Object.values(g);
  });
  await page.evaluate(() => document.activeElement && document.activeElement.blur());
  await page.locator('body').focus().catch(() => {});
  const reached = new Set();
  const complete = () => {
    for (const group of groups) {
      if (group.some((k) => reached.has(k))) group.forEach((k) => reached.add(k));
    }
    return wanted.every((k) => reached.has(k));
  };
  // A date field takes three stops (day, month, year) in Chromium.
  for (let i = 0; i < wanted.length * 3 + 10 && !complete(); i++) {
    await page.keyboard.press('Tab');
    const k = await page.evaluate(() => document.activeElement && document.activeElement.dataset.kbd);
    if (k !== undefined && k !== null) reached.add(k);
  }
  const missed = wanted.filter((k) => !reached.has(k));
  const what = await page.evaluate(
    (ks) => ks.map((k) => document.querySelector(`[data-kbd="${k}"]`).outerHTML.slice(0, 80)),
    missed,
  );
  assert(missed.length === 0, `${name}: not reachable by Tab: ${what.join(' | ')}`);
}

let screens = 0;
async function screen(page, name) {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
  const minor = await accessible(page, name);
  await keyboard(page, name);
  screens += 1;
  log(`  screen ${name}: axe ok (${minor} minor), keyboard ok, screenshot saved`);
}

async function login(page, user, expectName) {
  await page.goto(`${CONSOLE}/console/`);
  await page.getByRole('link', { name: 'Logga in med SITHS' }).click();
  await page.locator('#login').fill(user);
  await page.locator('#password').fill('test');
  await page.getByRole('button', { name: 'Logga in' }).click();
  await page.waitForURL(`${CONSOLE}/console/`);
  await page.getByText(expectName).first().waitFor();
  log(`${user} logged in`);
}

async function logout(page, context) {
  await page.getByRole('button', { name: 'Logga ut' }).click();
  await page.getByText('Du är utloggad').waitFor();
  await context.clearCookies();
}

async function findChild(page) {
  await page.getByLabel('Barnets personnummer (ÅÅÅÅMMDD-NNNN)').fill(CHILD);
  await page.getByRole('button', { name: 'Sök' }).click();
  await page.getByRole('heading', { name: 'Barnets sida' }).waitFor();
  assert(!page.url().includes(CHILD.slice(2, 8)), `the number is in the URL ${page.url()}`);
  return page.url();
}

async function main() {
  const context = await chromium.launchPersistentContext(env('USER_DATA_DIR'), {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    ignoreHTTPSErrors: true,
    // axe-core is injected as a script; the console's own CSP allows none.
    bypassCSP: true,
    viewport: { width: 1200, height: 900 },
  });
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(20000);

  // The login page, before anyone is in.
  await page.goto(`${CONSOLE}/console/`);
  const csp = await page.evaluate(async () => (await fetch(location.href)).headers.get('content-security-policy'));
  assert(csp && csp.startsWith("default-src 'self'"), `CSP is ${csp}`);
  await screen(page, '00-inloggning');

  // 1. The contact center takes a call at night: an urgent block of one guardian.
  await login(page, 'registrar', 'Kim Kontaktcenter');
  await screen(page, '01-start');
  // Find the child by keyboard alone.
  for (let i = 0; i < 30; i++) {
    await page.keyboard.press('Tab');
    if (await page.evaluate(() => document.activeElement.id === 'f-pnr')) break;
  }
  await page.keyboard.type(CHILD);
  await page.keyboard.press('Enter');
  await page.getByRole('heading', { name: 'Barnets sida' }).waitFor();
  const childUrl = page.url();
  assert(!childUrl.includes(CHILD.slice(2, 8)), `the number is in the URL ${childUrl}`);
  assert((await page.textContent('main')).includes(MOTHER), 'the guardians are listed');
  await screen(page, '02-barnets-sida');

  await page.getByRole('link', { name: 'Akut blockering (telefon)' }).click();
  await page.getByRole('heading', { name: /Akut: Blockering/ }).waitFor();
  await screen(page, '03-akut-blockering');
  // A first try without the basis: the error stands next to the field, nothing typed is lost.
  await page.getByLabel(`Vårdnadshavare ${MOTHER}`).check();
  await page.getByLabel('Namn').fill('Sara Sjuksköterska');
  await page.getByLabel('E-post (bekräftelsen skickas hit').fill('ssk.bup@region.example, chef.bup@region.example');
  await page.getByLabel('Telefon').fill('010-000 00 00');
  await page.getByLabel('Vårdenhetens HSA-id').fill(UNIT);
  await page.getByLabel('Ansvarig verksamhetschef').fill('Vera Verksamhetschef');
  await page.getByLabel('Ärendenummer (diarienummer)').fill('BUP 2026-117');
  await page.locator('#f-basis').evaluate((el) => el.removeAttribute('required'));
  await page.getByRole('button', { name: 'Förhandsgranska' }).click();
  await page.getByText('Rätta det som är markerat nedan').waitFor();
  assert((await page.locator('#f-basis-fel').textContent()).includes('Måste fyllas i'), 'the error is next to the basis');
  assert((await page.getByLabel('Namn').inputValue()) === 'Sara Sjuksköterska', 'what was typed is kept');
  await screen(page, '04-fel-vid-falt');
  await page.getByLabel('Grund för beslutet').fill('Orosanmälan; polisärende');
  await page.getByRole('button', { name: 'Förhandsgranska' }).click();
  await page.getByRole('heading', { name: 'Förhandsgranskning' }).waitFor();
  const preview = await page.textContent('#forhandsgranskning');
  assert(preview.includes('Efter beslutet') && preview.includes('blockering'), 'the preview shows the block');
  assert((await check(MOTHER, CHILD)).reason === 'guardian', 'a preview writes nothing');
  await screen(page, '05-forhandsgranskning');

  // Save: the check listener must already answer `blocked` when the
  // server's answer arrives, before the page can say saved.
  let answeredBeforeSaved = null;
  await page.route('**/new/block', async (route) => {
    const req = route.request();
    if (req.method() !== 'POST' || !(req.postData() || '').includes('step=save')) return route.continue();
    const response = await route.fetch({ maxRedirects: 0 });
    answeredBeforeSaved = (await check(MOTHER, CHILD)).reason;
    await route.fulfill({ response });
  });
  await page.getByRole('button', { name: 'Spara beslutet' }).click();
  await page.getByText('Sparat.').waitFor();
  await page.unroute('**/new/block');
  assert(answeredBeforeSaved === 'blocked', `the check answered ${answeredBeforeSaved} when the page said saved`);
  const ruleId = page.url().match(/\/rule\/(\d+)/)[1];
  const note = await page.textContent('pre.note');
  assert(note.includes('Administrativ anteckning') && note.includes('Vera Verksamhetschef') && note.includes('Orosanmälan'), 'the journal note');
  log(`urgent block ${ruleId} saved; /v1/check answered blocked before the page said saved`);
  await screen(page, '06-sparat-journalanteckning');

  // The worklist shows it, oldest first, with its age; confirm it there.
  await page.getByRole('link', { name: 'Arbetslista akuta' }).click();
  const row = page.locator(`#beslut-${ruleId}`);
  await row.waitFor();
  assert((await row.textContent()).includes('min'), 'the age is shown');
  await screen(page, '07-arbetslista');
  await row.getByLabel('Blankettens referens').fill('Blankett 2026-117');
  await row.getByLabel('Enhetens begäran (referens)').fill('Begäran BUP 2026-117');
  await row.getByRole('button', { name: 'Bekräfta' }).click();
  await page.getByText(`Blanketten för beslut ${ruleId} är registrerad.`).waitFor();
  await page.getByRole('link', { name: 'Arbetslista akuta' }).click();
  await page.getByText('Inga akuta beslut väntar på blankett.').waitFor();
  assert((await check(MOTHER, CHILD)).reason === 'blocked', 'confirming keeps it in force');
  log('confirmed from the worklist');
  await logout(page, context);

  // 2. The head of unit lifts it after the threat assessment.
  await login(page, 'unithead', 'Vera Verksamhetschef');
  await page.getByRole('link', { name: 'Enhetens beslut' }).click();
  await screen(page, '08-enhetens-beslut');
  await page.getByRole('link', { name: `Beslut ${ruleId}` }).click();
  await page.getByRole('heading', { name: 'Häv beslutet' }).waitFor();
  await page.getByLabel('Ansvarig verksamhetschef').fill('Vera Verksamhetschef');
  await page.getByLabel('Grund för att häva').fill('Hotbilden kontrollerad med socialförvaltningen');
  // The checkbox by keyboard.
  await page.getByLabel('Verksamhetschefen har kontrollerat hotbilden hos socialförvaltningen').focus();
  await page.keyboard.press('Space');
  await screen(page, '09-hav-beslut');
  await page.getByRole('button', { name: 'Häv beslutet' }).click();
  await page.getByText('Hävt.').waitFor();
  assert((await check(MOTHER, CHILD)).reason === 'guardian', 'the guardian sees the journal again');
  log('lifted by the unit head');
  await logout(page, context);

  // 3. Another unit sees neither the decision nor a way to act on it.
  await login(page, 'otherunit', 'Olle Annanenhet');
  const otherChild = await findChild(page);
  assert(!(await page.textContent('main')).includes(`Beslut ${ruleId}`), 'another unit does not see the decision');
  await page.goto(`${otherChild}/rule/${ruleId}`);
  await page.getByText('hör till en annan vårdenhet').waitFor();
  assert(!(await page.textContent('main')).includes('Häv beslutet'), 'nor the lift form');
  await screen(page, '10-annan-enhet');
  // The first unit's handle is not valid in this session either.
  await page.goto(childUrl);
  await page.getByText('Barnet finns inte i den här sessionen').waitFor();
  log('another unit is kept out');
  await logout(page, context);

  // 4. The auditor: the timeline and who has looked.
  await login(page, 'auditor', 'Alva Granskare');
  await findChild(page);
  const timeline = await page.textContent('main');
  for (const event of ['Blockering av vårdnadshavare registrerad (akut)', 'Undertecknad blankett registrerad', 'Hävd']) {
    assert(timeline.includes(event), `the timeline has ${event}`);
  }
  await screen(page, '11-tidslinje');
  await page.getByRole('link', { name: 'Åtkomstlogg' }).click();
  await page.getByLabel('Patientens personnummer (tomt: alla)').fill(CHILD);
  await page.getByRole('button', { name: 'Visa' }).click();
  await page.getByRole('heading', { name: 'Loggutdrag för patient' }).waitFor();
  const extract = await page.textContent('main');
  for (const who of ['Kim Kontaktcenter', 'Vera Verksamhetschef', 'Olle Annanenhet', 'Alva Granskare']) {
    assert(extract.includes(who), `the log extract names ${who}`);
  }
  for (const what of ['Visade barnets uppgifter', 'Förhandsgranskade ett beslut', 'Visade arbetslistan', 'Visade ett beslut']) {
    assert(extract.includes(what), `the log extract has ${what}`);
  }
  await screen(page, '12-loggutdrag');
  log('the auditor sees the timeline and the access log');
  await logout(page, context);

  await context.close();
  log(`all flows passed (${screens} screens)`);
}

main().catch((e) => {
  console.log(`FAILED: ${e.stack || e}`);
  process.exit(1);
});

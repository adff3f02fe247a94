"""The coordinator's status page in a real Chromium, driven by Playwright.

Run by tests/integration/web/browser.rs with ROLLOUT_WEB_TEST, a JSON object:
  origin       https://localhost:PORT of the page
  chromium     the browser to launch (Debian's /usr/bin/chromium)
  identities   {name: {"cert": PEM path, "key": PEM path}} of the dev PKI
  viewer_pkcs12, pkcs12_password   the viewer's PKCS#12 export and its password (the viewer
               presents it, as a browser that imported it would)
  practice     an ODS code to search for
  screenshots  a directory for one screenshot of each view

It loads each view as the viewer (the audit view as the auditor), prints READY-FOR-HALT on the
national picture and waits for a line on standard input: the driver has halted nationally
through the gRPC API. The page must then show the halt without a reload. Last, a backend
identity is refused and a browser with no certificate gets no page. Any failure raises (the
exit status says so); each view's load is printed as a `TIMING` line.

With "mode": "timing" (the system benchmark) it only loads each view three times in a fresh
page and prints the `TIMING` lines: the time to the view's figures and its first paint.
"""

import json
import os
import sys
import time

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import expect, sync_playwright

CFG = json.loads(os.environ["ROLLOUT_WEB_TEST"])
ORIGIN = CFG["origin"]
SHOTS = CFG["screenshots"]


def context(browser, who):
    certs = []
    if who is not None:
        ident = CFG["identities"][who]
        certs = [{"origin": ORIGIN, "certPath": ident["cert"], "keyPath": ident["key"]}]
    # The dev CA is not one the browser trusts; the page's own identity is not under test here.
    return browser.new_context(client_certificates=certs, ignore_https_errors=True, viewport={"width": 1280, "height": 900})


def load(page, path, heading, ready):
    started = time.monotonic()
    page.goto(ORIGIN + path)
    expect(page.get_by_role("heading", level=1)).to_have_text(heading)
    try:
        expect(ready).to_be_visible()
    except AssertionError:
        print("the page showed:", page.locator("main").inner_text(), file=sys.stderr, flush=True)
        raise
    expect(page.locator("#connection")).to_have_text("Live")
    expect(page.locator("#updated")).to_contain_text("Last updated")
    elapsed = (time.monotonic() - started) * 1000
    paint = page.evaluate(
        "() => (performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime || 0"
    )
    print(f"TIMING {path} loaded={elapsed:.0f}ms first-contentful-paint={paint:.0f}ms", flush=True)


def timing():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CFG["chromium"], args=["--no-sandbox"])
        viewer, auditor = context(browser, "viewer"), context(browser, "auditor")
        views = [
            (viewer, "/", "National picture", "Each supplier's synchronisation"),
            (viewer, "/commands", "Commands", "Commands, newest first"),
            (viewer, "/practices?q=" + CFG["practice"], "Practice search", "The rules in force for this practice"),
            (auditor, "/audit", "Audit", "Recent audit events, newest first"),
        ]
        for ctx, path, heading, ready in views:
            for _ in range(3):
                page = ctx.new_page()
                load(page, path, heading, page.get_by_text(ready).first)
                page.close()
        browser.close()


def shot(page, name):
    page.screenshot(path=os.path.join(SHOTS, name + ".png"), full_page=True)


def main():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CFG["chromium"], args=["--no-sandbox"])

        # The viewer as a browser holds it after importing the dev PKI's PKCS#12 export.
        viewer = browser.new_context(
            client_certificates=[{"origin": ORIGIN, "pfxPath": CFG["viewer_pkcs12"], "passphrase": CFG["pkcs12_password"]}],
            ignore_https_errors=True,
            viewport={"width": 1280, "height": 900},
        ).new_page()
        load(viewer, "/commands", "Commands", viewer.get_by_text("Commands, newest first"))
        shot(viewer, "commands")

        load(viewer, "/practices", "Practice search", viewer.get_by_label("ODS code or practice name"))
        viewer.get_by_label("ODS code or practice name").fill(CFG["practice"])
        viewer.get_by_role("button", name="Search").click()
        expect(viewer.get_by_role("heading", level=2)).to_contain_text(CFG["practice"])
        expect(viewer.get_by_text("Deciding rule").first).to_be_visible()
        shot(viewer, "practice")

        auditor = context(browser, "auditor").new_page()
        load(auditor, "/audit", "Audit", auditor.get_by_text("Recent audit events, newest first"))
        expect(auditor.locator(".chain")).to_contain_text("intact")
        shot(auditor, "audit")
        # A viewer may not read the audit log, here as through the gRPC API.
        viewer.goto(ORIGIN + "/audit")
        expect(viewer.get_by_role("alert")).to_contain_text("ROLE_REQUIRED")

        load(viewer, "/", "National picture", viewer.get_by_text("Each supplier's synchronisation"))
        halted = viewer.locator("table", has=viewer.locator("caption", has_text="Halted practices by region"))
        expect(halted.first).to_contain_text("none")
        shot(viewer, "national-before-halt")
        # A mark that a reload would wipe.
        viewer.evaluate("() => { window.notReloaded = true; }")
        events = int(viewer.evaluate("() => document.body.dataset.events || '0'"))
        print("READY-FOR-HALT", flush=True)
        if not sys.stdin.readline():
            raise SystemExit("the driver went away before halting")
        # Every ICB's row names the national halt now, none says "none": within 2 s, sooner
        # than the page's own 5 s refresh, so through its event stream.
        expect(halted.first).not_to_contain_text("none", timeout=2000)
        assert viewer.evaluate("() => window.notReloaded === true"), "the page was reloaded"
        assert int(viewer.evaluate("() => document.body.dataset.events")) > events, "told by the event stream"
        # Each supplier's own count of halted practices follows, from its next heartbeat.
        counts = viewer.locator("table", has=viewer.locator("caption", has_text="Practices at each supplier"))
        for supplier in ["cegedim", "emis", "microtest", "tpp"]:
            row = counts.first.locator("tr", has=viewer.locator("td", has_text=supplier))
            expect(row.locator("td").nth(3)).not_to_have_text("0", timeout=5000)
        shot(viewer, "national")
        # The first screenful, as the README shows it.
        viewer.screenshot(path=os.path.join(SHOTS, "national-first-screen.png"))

        backend = context(browser, "backend-emis").new_page()
        response = backend.goto(ORIGIN + "/")
        assert response.status == 403, response.status
        expect(backend.locator("body")).to_contain_text("IDENTITY_NOT_ALLOWED")

        anonymous = context(browser, None).new_page()
        try:
            response = anonymous.goto(ORIGIN + "/")
        except PlaywrightError as e:
            print(f"no certificate: refused ({str(e).splitlines()[0]})", flush=True)
        else:
            raise AssertionError(f"a browser without a certificate got a page: {response.status}")
        browser.close()
    print("STATUS-PAGE-OK", flush=True)


if __name__ == "__main__":
    timing() if CFG.get("mode") == "timing" else main()

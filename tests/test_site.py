"""The course's website: built as the README says, then read in headless Chromium over HTTP.

1. ``mkdocs build --strict`` into a temporary folder (a broken link or a missing page fails it); every notebook,
   every ``docs/*.md``, every subpackage and the benchmark page must have a page, and no page may load a
   script, a stylesheet or a font from elsewhere.
2. The widgets: each one whose state is saved shows its saved view; without saved state, a note says that the
   live widget needs Jupyter (``website/hooks.py`` on a copy of a notebook with its state removed).
3. Chromium opens the home page and four notebook pages served by ``http.server`` on a free localhost port, and
   checks that the maths is typeset (no ``$$`` left in the text, no TeX error), that every image has loaded,
   that the links to the next notebook and to the API reference resolve, and that the console shows no error.
   Screenshots go to the pytest temporary folder (``site-screens*``).

The browser part skips, with the reason, only where Chromium or playwright is missing (``browser.py``).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import subprocess
import sys
import threading
import urllib.request
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from browser import chromium, free_port, require_browser

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
BUILD_S = 300  # about 15 s on a quiet 2-core machine
UI_MS = 30_000  # a page load and its typesetting
# The home page and four notebooks: one without widgets, one widget, two widgets, and one with a figure only.
PAGES = ["", "notebooks/01_linear_memory/", "notebooks/07_persistent_memory_and_attention/", "notebooks/08_mac/",
         "notebooks/11_scaling_up/"]


def load_hooks():
    spec = importlib.util.spec_from_file_location("site_hooks", ROOT / "website" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site") / "site"
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=BUILD_S)
    assert result.returncode == 0, f"mkdocs build failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return out


def test_every_notebook_doc_and_subpackage_has_a_page(site):
    for path in NOTEBOOKS:
        page = site / "notebooks" / path.stem
        assert (page / "index.html").exists(), f"no page for {path.name}"
        assert (page / path.name).read_bytes() == path.read_bytes(), f"{path.name} is not offered for download"
        assert f'href="{path.name}" download' in (page / "index.html").read_text(encoding="utf-8")
    for path in (ROOT / "docs").glob("*.md"):
        name = "" if path.stem == "index" else path.stem
        assert (site / name / "index.html").exists(), f"no page for docs/{path.name}"
    for init in (ROOT / "titans_edu").glob("*/__init__.py"):
        api = (site / "api" / init.parent.name / "index.html").read_text(encoding="utf-8")
        assert f'id="titans_edu.{init.parent.name}"' in api, f"the API page of {init.parent.name} is empty"
    if (ROOT / "bench" / "README.md").exists():
        assert "Latest figures" in (site / "bench" / "index.html").read_text(encoding="utf-8")
    home = (site / "index.html").read_text(encoding="utf-8")
    for path in NOTEBOOKS:  # the course map links every notebook
        assert f'href="notebooks/{path.stem}/"' in home, f"the course map does not link {path.stem}"


def test_no_page_loads_anything_from_elsewhere(site):
    for page in site.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        for needle in ('<script src="http', '<link rel="stylesheet" href="http', "fonts.googleapis", "cdn.jsdelivr",
                       "cdnjs.cloudflare.com/ajax/libs/mathjax", "widget-state+json"):
            assert needle not in text, f"{page.relative_to(site)} contains {needle!r}"


def test_saved_widgets_show_their_saved_view(site):
    hooks = load_hooks()
    for path in NOTEBOOKS:
        notebook = json.loads(path.read_text(encoding="utf-8"))
        state = notebook["metadata"].get("widgets", {}).get(hooks.WIDGET_STATE, {}).get("state", {})
        views = [o["data"][hooks.WIDGET_VIEW]["model_id"] for c in notebook["cells"] for o in c.get("outputs", [])
                 if hooks.WIDGET_VIEW in o.get("data", {})]
        page = (site / "notebooks" / path.stem / "index.html").read_text(encoding="utf-8")
        saved = sum(model_id in state for model_id in views)
        assert page.count('class="widget-snapshot"') == saved, path.name
        assert page.count(hooks.NOTE_SAVED) == saved and page.count(hooks.NOTE_LIVE) == len(views) - saved, path.name
        assert "VBox(children=" not in page, path.name


def test_a_widget_without_saved_state_gets_a_note(tmp_path):
    """The same page from a notebook whose widget state was not saved: the note, and no widget repr."""
    hooks = load_hooks()
    notebook = json.loads((ROOT / "notebooks" / "01_linear_memory.ipynb").read_text(encoding="utf-8"))
    del notebook["metadata"]["widgets"]
    path = tmp_path / "01_linear_memory.ipynb"
    path.write_text(json.dumps(notebook), encoding="utf-8")
    from mkdocs_jupyter import convert

    page = hooks.notebook_page(convert.nb2html(str(path)), path)
    assert page.count(hooks.NOTE_LIVE) == 1 and hooks.NOTE_SAVED not in page
    assert "VBox(children=" not in page and "widget-snapshot" not in page


def test_experiment_results_become_tables():
    hooks = load_hooks()
    table = hooks.json_markdown({"loss": 1.5, "steps": 10})
    assert table == "| key | value |\n| --- | --- |\n| loss | 1.5 |\n| steps | 10 |"
    rows = hooks.json_markdown([{"variant": "mac", "acc": 0.9}, {"variant": "mag", "acc": 0.8}])
    assert rows.splitlines()[0] == "| variant | acc |" and rows.splitlines()[-1] == "| mag | 0.8 |"
    assert hooks.json_markdown({"runs": [1, [2]]}).startswith("```json")


# --- in the browser ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(site):
    """The built site over HTTP on a free localhost port: yields its base URL."""
    handler = functools.partial(QuietHandler, directory=str(site))
    server = QuietServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        """A page closed while a file was still on its way is no failure of the site; anything else is."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def resolves(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status == 200


TYPESET = """
() => Promise.race([MathJax.startup.promise.then(() => true),
                    new Promise(done => setTimeout(() => done(false), 20000))])
"""
CHECKS = """
() => {
    const text = document.querySelector("article").innerText;
    const images = [...document.querySelectorAll("img")];
    return {
        rawDisplayMath: text.includes("$$"),
        typeset: document.querySelectorAll("mjx-container").length,
        texErrors: document.querySelectorAll('mjx-container [data-mml-node="merror"], mjx-merror').length,
        images: images.length,
        broken: images.filter(img => !img.complete || img.naturalWidth === 0).map(img => img.src.slice(0, 80)),
        next: document.querySelector("a.md-footer__link--next")?.href ?? null,
        nextTitle: document.querySelector("a.md-footer__link--next .md-ellipsis")?.innerText.trim() ?? null,
        api: [...document.querySelectorAll("a.md-tabs__link")].find(a => a.innerText.trim() === "API reference")?.href,
    };
}
"""


@pytest.mark.browser
def test_pages_in_chromium(served, tmp_path_factory):
    require_browser()
    screens = tmp_path_factory.mktemp("site-screens")
    names = [p.stem for p in NOTEBOOKS]
    problems: list[str] = []
    with chromium() as browser:
        for path in PAGES:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(UI_MS)
            errors: list[str] = []
            page.on("console", lambda m, errors=errors: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
            page.on("requestfailed", lambda r, errors=errors: errors.append(f"failed: {r.url[:100]}"))
            page.goto(served + path, wait_until="load")
            page.wait_for_function("() => window.MathJax && window.MathJax.startup && window.MathJax.startup.promise")
            typeset_in_time = page.evaluate(TYPESET)
            found = page.evaluate(CHECKS)
            name = path.strip("/").split("/")[-1] or "home"
            page.screenshot(path=str(screens / f"{name}.png"))
            snapshot = page.locator(".widget-snapshot").first
            if snapshot.count():
                snapshot.scroll_into_view_if_needed()
                page.wait_for_timeout(500)  # the header's title settles after a scroll
                page.screenshot(path=str(screens / f"{name}-widget.png"))

            where = f"/{path}"
            if not typeset_in_time:
                problems.append(f"{where}: MathJax did not finish within 20 s")
            if found["rawDisplayMath"]:
                problems.append(f"{where}: '$$' left in the visible text")
            if path and not found["typeset"]:
                problems.append(f"{where}: no typeset maths")
            if found["texErrors"]:
                problems.append(f"{where}: {found['texErrors']} TeX errors")
            if found["broken"]:
                problems.append(f"{where}: images not loaded: {found['broken']}")
            if path.startswith("notebooks/") and not found["images"]:
                problems.append(f"{where}: no figure")
            if not (found["api"] and resolves(found["api"])):
                problems.append(f"{where}: the API reference link does not resolve: {found['api']}")
            if not (found["next"] and resolves(found["next"])):
                problems.append(f"{where}: the next-page link does not resolve: {found['next']}")
            stem = path.strip("/").split("/")[-1]
            following = names[names.index(stem) + 1] if stem in names[:-1] else names[0] if not path else None
            if following and not found["next"].endswith(f"/notebooks/{following}/"):
                problems.append(f"{where}: the next link goes to {found['next']}, not to {following}")
            if errors:
                problems.append(f"{where}: console errors: {errors[:5]}")
            page.close()
    print(f"screenshots: {screens}")
    assert not problems, "\n".join(problems)

"""What the browser tests share: Debian's Chromium driven by playwright, and the reason they skip without it.

``test_browser.py`` drives JupyterLab with it, ``test_site.py`` the course's website.
"""

from __future__ import annotations

import socket
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def require_browser():
    """``(sync_playwright, expect)``; skips, with the reason, where Chromium or playwright is missing."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is absent; install it with: apt-get install -y chromium")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.skip("playwright is not importable; install it with: pip install playwright")
    return sync_playwright, expect


@contextmanager
def chromium():
    """A headless Chromium, closed afterwards (call ``require_browser`` first)."""
    sync_playwright, _ = require_browser()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()

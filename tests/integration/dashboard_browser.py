"""Headless Chromium (Debian's `chromium` and `chromium-driver`) driven by selenium, for the
dashboard test. The flags are what a root process on a machine without network needs:
no sandbox, and none of Chromium's background calls home."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1400",
)


@contextmanager
def chromium(profile: Path) -> Iterator[webdriver.Chrome]:
    options = Options()
    for flag in _FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


# One snapshot of what the page shows, read in one script run: the page redraws every two
# seconds, so element handles kept across calls would go stale mid-read.
_STATE_SCRIPT = """
const cells = (sel) => Array.from(document.querySelectorAll(sel)).map(
  (row) => Array.from(row.querySelectorAll("td")).map((c) => c.textContent));
return {
  window: document.getElementById("window").value,
  shown_window: document.body.dataset.window,
  nodes: Array.from(document.querySelectorAll("#graph g.node")).map((n) => n.dataset.service),
  edges: Array.from(document.querySelectorAll("#graph g.edge")).map((e) => ({
    source: e.dataset.source, destination: e.dataset.destination,
    requests: e.dataset.requests, idle: e.classList.contains("idle"),
    label: e.querySelector("text").textContent})),
  tables: {
    services: cells("#services tbody tr"), edges: cells("#edges tbody tr"),
    denials: cells("#denials tbody tr"), workloads: cells("#workloads tbody tr")},
};
"""


def page_state(driver: webdriver.Chrome) -> dict[str, Any]:
    state: dict[str, Any] = driver.execute_script(_STATE_SCRIPT)
    return state

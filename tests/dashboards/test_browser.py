"""The dashboard in a real browser: `streamlit run` (the command line `monitor dashboard`
uses) on a free loopback port over the simulated deployment, each page loaded in headless
Chromium, signed in with a read token, until it has rendered, a screenshot of each, the
visible content checked, and a rollback approved through the page (token and reason typed,
Enter pressed in both fields without effect, "Approve rollback…" and then "Confirm" clicked)
moving the production alias in the database.

Needs Debian's ``chromium`` and ``chromium-driver``; skipped locally without them, a failure
under CI=true. ``MONITOR_SAVE_SCREENSHOTS=1`` also writes a few screenshots to
``docs/screenshots/`` for the README.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy import select

from monitor.commands.dashboard import streamlit_command
from monitor.store.db import session_scope
from monitor.store.models import AuditEntry, ModelAlias, ModelVersion, RollbackRecommendation
from tests.conftest import require_server
from tests.dashboards.conftest import (
    APP,
    OPERATOR,
    OPERATOR_TOKEN,
    VIEWER_TOKEN,
    DashboardData,
)
from tests.servers import free_port, stop_process
from tests.simdb import MODEL, PREVIOUS, PRODUCTION

pytestmark = pytest.mark.server

START_TIMEOUT_S = 90
RENDER_TIMEOUT_S = 90
SCREENSHOT_WIDTH = 1500
SAVED_SCREENSHOTS = ("overview", "drift", "alerts", "bias")
DOCS_SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--hide-scrollbars")
# page path -> what a person must see on it
PAGES = {
    "overview": ("", ("cxr-triage", "5,000", "Health score per check window")),
    "drift": ("drift", ("Sequential evidence per family", "Detectors over time", "Top driver",
                        "XR-SOUTH-1", "VF12B", "Windows with a paging finding")),
    "scanners": ("scanners", ("software VF12B on SIEMENS Ysio Max",
                              "scanner FUJIFILM Corporation FDR Smart X")),
    "bias": ("bias", ("age_band = 80+", "Subgroup table")),
    "overrides": ("overrides", ("Override rate", "Most recent overridden studies")),
    "alerts": ("alerts", ("Open incidents", "Critical incidents", "XR-SOUTH-1 (SIEMENS Ysio Max",
                          "Resolved and accepted incidents", "Acknowledge or silence a finding",
                          "Recent findings")),
    "versions": ("versions", (f"roll cxr-triage production back from {PRODUCTION} to "
                              f"{PREVIOUS}", "Approve rollback…", "Audit log")),
}


def chromium_paths() -> tuple[str | None, str | None]:
    binary = next((found for name in ("chromium", "chromium-browser", "google-chrome")
                   if (found := shutil.which(name))), None)
    return binary, shutil.which("chromedriver")


def wait_for_health(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(0.3)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    pytest.fail(f"the dashboard did not start at {url}:\n{tail}")


@pytest.fixture
def dashboard_url(evidence_env: DashboardData, tmp_path: Path) -> Iterator[str]:
    binary, driver = chromium_paths()
    require_server(binary is not None and driver is not None, "Chromium and chromedriver")
    port = free_port()
    log = tmp_path / "streamlit.log"
    command = streamlit_command(app=APP, address="127.0.0.1", port=port)
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT,
                                   env={**os.environ}, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, process, log)
        yield url
    finally:
        stop_process(process)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    binary, driver = chromium_paths()
    require_server(binary is not None and driver is not None, "Chromium and chromedriver")
    options = Options()
    options.binary_location = str(binary)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.add_argument(f"--window-size={SCREENSHOT_WIDTH},1800")
    session = webdriver.Chrome(options=options, service=Service(str(driver)))
    session.set_page_load_timeout(RENDER_TIMEOUT_S)
    try:
        yield session
    finally:
        session.quit()


def sign_in(browser: WebDriver, token: str = VIEWER_TOKEN) -> None:
    """Type a read token into the sign-in form the dashboard shows first, and submit it
    (a page load is a new Streamlit session, which signs in anew)."""
    wait = WebDriverWait(browser, RENDER_TIMEOUT_S, poll_frequency=0.3)
    field = wait.until(ec.presence_of_element_located(
        (By.CSS_SELECTOR, 'input[aria-label="Read token"]')))
    field.send_keys(token)
    browser.find_element(By.XPATH, "//button[.//p[text()='Sign in']]").click()
    wait.until(lambda b: not b.find_elements(By.CSS_SELECTOR,
                                             'input[aria-label="Read token"]'))


def open_signed_in(browser: WebDriver, url: str, token: str = VIEWER_TOKEN) -> None:
    browser.get(url)
    sign_in(browser, token)


def page_text(browser: WebDriver) -> str:
    return browser.find_element(By.CSS_SELECTOR, '[data-testid="stMain"]').text


def wait_rendered(browser: WebDriver, expected: tuple[str, ...]) -> None:
    """Until the script has run (a metric is on the page, no run in progress) and every
    expected text is visible."""
    wait = WebDriverWait(browser, RENDER_TIMEOUT_S, poll_frequency=0.3)
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, '[data-testid="stMetric"]')))
    try:
        wait.until(lambda b: all(text in page_text(b) for text in expected)
                   and not b.find_elements(By.CSS_SELECTOR,
                                           '[data-testid="stStatusWidget"]'))
    except TimeoutException:
        missing = [t for t in expected if t not in page_text(browser)]
        pytest.fail(f"{browser.current_url}: never showed {missing}")
    # charts draw after the script run; give the Vega views a moment to paint
    wait.until(lambda b: all(chart.size["height"] > 0 for chart in b.find_elements(
        By.CSS_SELECTOR, '[data-testid="stVegaLiteChart"] canvas, '
        '[data-testid="stVegaLiteChart"] svg')))
    time.sleep(1.0)


def screenshot(browser: WebDriver, path: Path) -> None:
    """The whole page: the window grown to the document's height first."""
    height = browser.execute_script(
        "const main = document.querySelector('[data-testid=\"stMain\"]');"
        "return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight,"
        " main ? main.scrollHeight : 0)")
    browser.set_window_size(SCREENSHOT_WIDTH, max(1000, min(int(height) + 80, 6000)))
    time.sleep(0.8)
    browser.save_screenshot(str(path))
    browser.set_window_size(SCREENSHOT_WIDTH, 1800)


def test_every_page_renders_with_its_content(dashboard_url: str, browser: WebDriver,
                                             tmp_path: Path) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    for name, (path, expected) in PAGES.items():
        open_signed_in(browser, f"{dashboard_url}/{path}")
        wait_rendered(browser, expected)
        assert not browser.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]'), name
        assert "Page not found" not in browser.page_source, name
        screenshot(browser, shots / f"{name}.png")
        assert (shots / f"{name}.png").stat().st_size > 20_000, name
    if os.environ.get("MONITOR_SAVE_SCREENSHOTS") == "1":
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        for name in SAVED_SCREENSHOTS:
            shutil.copyfile(shots / f"{name}.png", DOCS_SCREENSHOTS / f"{name}.png")


def svg_texts(browser: WebDriver, chart: WebElement) -> list[str]:
    """The text drawn in a chart's SVG (titles, axes, legend labels)."""
    return [t for t in browser.execute_script(
        "return Array.from(arguments[0].querySelectorAll('svg text'))"
        ".map(e => e.textContent)", chart) if t]


def test_drift_page_sequential_chart_has_its_legend(dashboard_url: str,
                                                   browser: WebDriver) -> None:
    open_signed_in(browser, f"{dashboard_url}/drift")
    wait_rendered(browser, ("Sequential evidence per family",))
    wait = WebDriverWait(browser, RENDER_TIMEOUT_S, poll_frequency=0.3)
    title = f"version {PRODUCTION}"

    def sequential_chart(b: WebDriver) -> WebElement | bool:
        for chart in b.find_elements(By.CSS_SELECTOR, '[data-testid="stVegaLiteChart"]'):
            if title in svg_texts(b, chart):
                return chart
        return False

    chart = wait.until(sequential_chart)
    texts = svg_texts(browser, chart)
    for name in ("embedding", "metadata", "prediction", "bias", "warning level", "page level",
                 "statistic / page threshold"):
        assert name in texts, (name, texts)
    legend = browser.execute_script(
        "return arguments[0].querySelectorAll('svg g.role-legend').length", chart)
    assert legend == 1


def test_nothing_shows_before_sign_in(dashboard_url: str, browser: WebDriver) -> None:
    browser.get(f"{dashboard_url}/drift")
    wait = WebDriverWait(browser, RENDER_TIMEOUT_S, poll_frequency=0.3)
    wait.until(ec.presence_of_element_located(
        (By.CSS_SELECTOR, 'input[aria-label="Read token"]')))
    text = page_text(browser)
    assert "Detectors over time" not in text and "cxr-triage" not in text
    assert not browser.find_elements(By.CSS_SELECTOR, '[data-testid="stMetric"]')


def test_drift_page_links_to_the_windows_evidently_report(
        dashboard_url: str, browser: WebDriver, tmp_path: Path) -> None:
    open_signed_in(browser, f"{dashboard_url}/drift")
    wait_rendered(browser, ("Open the Evidently report for this window",))
    link = browser.find_element(By.PARTIAL_LINK_TEXT, "Open the Evidently report for this window")
    assert "/report?run=" in (link.get_attribute("href") or "")
    link.click()  # within the session: no second sign-in
    wait = WebDriverWait(browser, RENDER_TIMEOUT_S, poll_frequency=0.3)
    wait.until(lambda b: "Download the HTML report" in page_text(b))
    frame = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "iframe")))
    wait.until(lambda b: frame.size["height"] > 500)
    browser.switch_to.frame(frame)
    try:
        wait.until(lambda b: "window" in b.find_element(By.TAG_NAME, "h2").text)
    finally:
        browser.switch_to.default_content()
    screenshot(browser, tmp_path / "report.png")


def _production(data: DashboardData) -> str | None:
    with session_scope(data.runtime.sessions) as session:
        return session.scalar(
            select(ModelVersion.version)
            .join(ModelAlias, ModelAlias.model_version_id == ModelVersion.id)
            .where(ModelAlias.model == MODEL, ModelAlias.alias == "production"))


def _idle(browser: WebDriver) -> bool:
    return not browser.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]')


def _button(label: str) -> tuple[str, str]:
    return (By.XPATH, f"//button[.//p[text()='{label}']]")


def test_approving_a_rollback_in_the_page_takes_a_confirming_click(
        dashboard_url: str, browser: WebDriver, evidence_env: DashboardData) -> None:
    rec_id = evidence_env.recommendation_id
    open_signed_in(browser, f"{dashboard_url}/versions")
    wait_rendered(browser, ("Approve rollback…",))
    wait = WebDriverWait(browser, RENDER_TIMEOUT_S, poll_frequency=0.3)
    reason_text = "sensitivity of 1.4.0 dropped; back to 1.3.0"
    token = browser.find_element(By.CSS_SELECTOR, 'input[aria-label="Operator token"]')
    token.send_keys(OPERATOR_TOKEN + Keys.ENTER)
    reason = browser.find_element(By.CSS_SELECTOR, 'textarea[aria-label="Reason"]')
    reason.send_keys(reason_text + Keys.ENTER)  # a new line in the reason, no submission
    reason.send_keys(Keys.CONTROL + Keys.ENTER)  # commits the text: a rerun, no submission
    wait.until(_idle)
    assert not browser.find_elements(*_button("Confirm"))
    assert _production(evidence_env) == PRODUCTION

    browser.find_element(*_button("Approve rollback…")).click()
    confirm = wait.until(ec.element_to_be_clickable(_button("Confirm")))
    moving = f"move production of {MODEL} from {PRODUCTION} to {PREVIOUS}"
    assert moving in page_text(browser).replace("\\", "")
    # the first click (and every Enter before it, each handled in order) moved nothing
    assert _production(evidence_env) == PRODUCTION
    reason = browser.find_element(By.CSS_SELECTOR, 'textarea[aria-label="Reason"]')
    reason.send_keys(Keys.CONTROL + Keys.ENTER)
    wait.until(_idle)
    assert _production(evidence_env) == PRODUCTION
    confirm = wait.until(ec.element_to_be_clickable(_button("Confirm")))
    confirm.click()
    try:
        wait.until(lambda b: f"production now points at {PREVIOUS}" in page_text(b))
    except TimeoutException:
        pytest.fail(f"no confirmation; the page says: {page_text(browser)[:1500]}")
    with session_scope(evidence_env.runtime.sessions) as session:
        status = session.scalar(select(RollbackRecommendation.status)
                                .where(RollbackRecommendation.id == rec_id))
        audit = [tuple(row) for row in session.execute(
            select(AuditEntry.actor, AuditEntry.reason).where(AuditEntry.action == "rollback"))]
    assert _production(evidence_env) == PREVIOUS
    assert status == "executed"
    assert audit == [(OPERATOR, reason_text)]

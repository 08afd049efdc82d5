"""OHIF in Debian's Chromium, driven by Playwright, the way a radiologist clicks through it.

Chromium renders with SwiftShader here (no GPU), so every step waits on what the page
shows, never on a fixed delay. Screenshots go to the folder the caller names.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
# As the machine's own browser probe starts it, plus SwiftShader for OHIF's WebGL.
CHROMIUM_ARGS = ["--no-sandbox", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--use-angle=swiftshader",
                 "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"]
STEP_TIMEOUT_MS = 60_000
# An SR's boxes come within about 7 s on an idle machine (OhifPage.overlay_labels).
REDRAW_AFTER_MS = 20_000
SR_TITLE = "AI findings (cxr-node)"  # node.reporting's SR Series Description
SC_TITLE = "AI findings burned-in"


def browser_missing() -> str | None:
    """Why the browser test cannot run here, or None."""
    if shutil.which(CHROMIUM) is None:
        return f"{CHROMIUM} is not installed (Debian: chromium; `make tools`)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (`make test` installs .[test])"
    return None


def require_viewer() -> None:
    """OHIF's files for the node to serve and a browser to open them, or the test cannot
    run (a failure under CI=true, see tests.conftest.unavailable)."""
    from node.viewer import DEFAULT_OHIF_DIST
    from tests.conftest import unavailable

    if not (DEFAULT_OHIF_DIST / "index.html").is_file():
        unavailable(f"OHIF is not in {DEFAULT_OHIF_DIST} (run `make viewer-assets`)")
    missing = browser_missing()
    if missing:
        unavailable(missing)


@contextmanager
def chromium_page(screenshots: Path) -> Iterator[OhifPage]:
    from playwright.sync_api import sync_playwright

    screenshots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(STEP_TIMEOUT_MS)
            yield OhifPage(page, screenshots)
        finally:
            browser.close()


class OhifPage:
    def __init__(self, page, screenshots: Path) -> None:  # noqa: ANN001 - playwright Page
        self.page = page
        self.screenshots = screenshots
        self.console: list[str] = []
        page.on("console", lambda message: self.console.append(message.text))

    def shot(self, name: str) -> Path:
        path = self.screenshots / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path

    def open_study(self, url: str) -> None:
        """The study in OHIF's viewer, its first image drawn, the first-visit tour closed."""
        self.page.goto(url)
        self.page.get_by_text("Skip all").click()  # the tour shows once the image is up

    def open_series(self, title: str, number: int = 0) -> None:
        """Double-click the ``number``-th series so titled in the study browser: it fills
        the active viewport."""
        self.page.get_by_text(title, exact=False).nth(number).dblclick()

    def wait_for_viewport_series(self, title: str) -> str:
        """The viewport's own top-left annotation (date and series description) once it
        names the series ``title``: the series is what the viewport shows."""
        corner = self.page.locator('[data-cy="viewport-overlay-top-left"]').first
        corner.filter(has_text=title).wait_for()
        return corner.inner_text()

    def wait_for_no_labels(self) -> None:
        self.page.wait_for_function("document.querySelectorAll('svg text').length === 0")

    def overlay_labels(self, count: int) -> list[str]:
        """The texts drawn over the image once at least ``count`` are there.

        With the page's CPU slowed (Chromium's throttling, 8 times, or a busy 2-core
        machine) OHIF 3.13 adds an SR's previewed boxes after the viewport's last render and
        does not render again: the prompt to track is up, the boxes are not, and the console
        lists each measurement ("Measurement is preview, skipping..."). Anything that
        redraws the image draws them. So when they are not there after ``REDRAW_AFTER_MS``
        the window is made a pixel narrower, as a radiologist resizing it would: at 8 times
        throttled the labels then came within a second in each of 4 tries, where 9 tries
        without it drew none in 40 s. A failure names its screenshot and OHIF's console.
        """
        from playwright.sync_api import TimeoutError as StepTimeout

        drawn = f"document.querySelectorAll('svg text').length >= {count}"
        try:
            self.page.wait_for_function(drawn, timeout=REDRAW_AFTER_MS)
        except StepTimeout:
            print(f"\nno label after {REDRAW_AFTER_MS} ms: the window resized to redraw "
                  f"({self.shot('labels-missing-before-redraw')})")
            size = self.page.viewport_size
            self.page.set_viewport_size({"width": size["width"] - 1, "height": size["height"]})
            try:
                self.page.wait_for_function(drawn)
            except StepTimeout:
                shown = self.shot("no-labels")
                raise AssertionError(f"fewer than {count} labels drawn, also after a redraw "
                                     f"and {STEP_TIMEOUT_MS} ms (the page: {shown}); OHIF's "
                                     f"console: {self.console[-20:]}") from None
        script = "els => els.map(e => e.textContent.trim()).filter(t => t)"
        return self.page.locator("svg text").evaluate_all(script)

    def track_measurements(self, count: int) -> str:
        """Answer "Yes" to tracking, open the measurement panel, and return its text once it
        lists ``Measurements (count)`` (or after the step's timeout, whatever it lists)."""
        from playwright.sync_api import TimeoutError as StepTimeout

        self.page.get_by_text("continue tracking measurements").wait_for()
        self.page.get_by_role("button", name="Yes").click()
        self.page.locator('[data-cy="trackedMeasurements-btn"]').click()
        heading = self.page.get_by_text(f"Measurements ({count})", exact=True)
        try:
            heading.wait_for()
        except StepTimeout:
            pass  # the caller's assertion shows what the panel says instead
        body = self.page.inner_text("body")
        return body[body.rfind("Measurements ("):]

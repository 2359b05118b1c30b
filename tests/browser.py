"""Open a report in the system's headless Chromium (Debian packages chromium + chromium-driver, driven by
Selenium) and check that it rendered: title, every image decoded, no console errors; save a screenshot."""

import shutil
from pathlib import Path

import pytest

needs_chromium = pytest.mark.skipif(
    not (shutil.which("chromium") and shutil.which("chromedriver")),
    reason="needs the Debian packages chromium and chromium-driver (.ci/run installs them)",
)


def check_in_chromium(html: Path, title: str, profile: Path, screenshot: Path) -> list[str]:
    """Asserts the page rendered; returns the alt texts of its images."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(html.resolve().as_uri())
        assert driver.title == title
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth]);"
        )
        assert all(complete and width > 0 for _, complete, width in images), images
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == []
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1400, min(height, 16000))
        assert driver.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
        return [alt for alt, _, _ in images]
    finally:
        driver.quit()

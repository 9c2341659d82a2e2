"""The Gradio demo page in headless Chromium against a real `flamingo serve` process."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from flamingo.serve.examples import example_specs

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)


@pytest.fixture
def browser(tmp_path: Path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    flags = (
        "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking"
    )
    flags += " --disable-component-update --disable-sync --disable-dev-shm-usage --window-size=1400,1250"
    for flag in flags.split():
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every request the page makes
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _save_artifact(driver, tmp_path: Path, name: str) -> Path:
    shot = tmp_path / name
    driver.save_screenshot(str(shot))
    target = os.environ.get("FLAMINGO_TEST_ARTIFACTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(target) / name)
    return shot


def _requested_urls(driver) -> list[str]:
    entries = (json.loads(e["message"])["message"] for e in driver.get_log("performance"))
    return [e["params"]["request"]["url"] for e in entries if e["method"] == "Network.requestWillBeSent"]


def _preview_ready(driver, images: int) -> bool:
    """The preview shows ``images`` numbered chips, each with its thumbnail, and no problem; status cleared."""
    from selenium.webdriver.common.by import By

    chips = driver.find_elements(By.CSS_SELECTOR, "#preview .fl-chip")
    thumbs = driver.find_elements(By.CSS_SELECTOR, "#preview .fl-chip img")
    problems = driver.find_elements(By.CSS_SELECTOR, "#preview .fl-problem")
    status = driver.find_element(By.ID, "status").text.strip()
    return len(chips) == len(thumbs) == images and not problems and not status


def _generate(driver, wait) -> str:
    """Click Generate, wait for the status line to say done, return the answer shown."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "generate").click()
    wait.until(lambda d: d.find_element(By.ID, "status").text.startswith(("done", "error")))
    assert driver.find_element(By.ID, "status").text.startswith("done")
    return driver.find_element(By.CSS_SELECTOR, "#answer textarea").get_property("value")


def test_page_builds_a_few_shot_prompt_and_streams_the_answer(live_server, browser, pipe, images, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    paths = []
    for i, image in enumerate(images[:2]):
        paths.append(tmp_path / f"upload{i}.png")
        image.save(paths[-1])
    wait = WebDriverWait(browser, 120, poll_frequency=0.2)
    browser.get(live_server)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#preview .fl-chip"))
    assert not browser.find_elements(By.CSS_SELECTOR, "#preview .fl-problem")  # nothing red before any input
    assert browser.find_elements(By.CSS_SELECTOR, "#preview .fl-hint")  # what to fill in, said plainly
    shots = browser.find_element(By.CSS_SELECTOR, "#shots input[type=number]")
    shots.send_keys(Keys.CONTROL, "a")
    shots.send_keys("1", Keys.TAB)  # one demonstration, then the query
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#preview .fl-chip")) == 2)

    browser.find_element(By.CSS_SELECTOR, "#demo-1-image input[type=file]").send_keys(str(paths[0]))
    browser.find_element(By.CSS_SELECTOR, "#demo-1-text textarea").send_keys("Output:a red circle")
    browser.find_element(By.CSS_SELECTOR, "#query-image input[type=file]").send_keys(str(paths[1]))
    wait.until(lambda d: _preview_ready(d, images=2))
    chips = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#preview .fl-chip")]
    assert chips == ["image 1", "image 2"]  # the preview shows which image each text belongs to
    segments = [s.text for s in browser.find_elements(By.CSS_SELECTOR, "#preview .fl-seg")]
    assert segments == ["Output:a red circle", "Output:"]

    shown = _generate(browser, wait)
    _save_artifact(browser, tmp_path, "serve_demo.png")
    expected = pipe(
        [images[0], "Output:a red circle<|endofchunk|>\n", images[1], "Output:"], max_new_tokens=20
    )
    assert expected, "the tiny model should generate some text for this prompt"
    assert shown == expected

    # A ready-made example (VQA, beam search) fills the builder and runs with its own settings.
    example = next(
        b for b in browser.find_elements(By.CSS_SELECTOR, "#examples button") if "question" in b.text
    )
    example.click()
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#mode input[value=beam]").is_selected())
    wait.until(lambda d: _preview_ready(d, images=3))
    shown = _generate(browser, wait)
    _save_artifact(browser, tmp_path, "serve_demo_example.png")
    spec = example_specs()[1]
    row = []
    for shot in spec["shots"]:
        row += [shot["image"], shot["text"] + "<|endofchunk|>\n"]
    row += [spec["query"]["image"], spec["query"]["text"]]
    assert shown == pipe(row, max_new_tokens=5, num_beams=3)

    web = [u for u in _requested_urls(browser) if u.startswith(("http:", "https:", "ws:", "wss:"))]
    assert len(web) > 10 and [u for u in web if not u.startswith(live_server + "/")] == []  # nothing fetched
    # from another host (no CDN, fonts or telemetry): the page works offline

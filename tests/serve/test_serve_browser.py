"""The demo page in headless Chromium against a real `flamingo serve` process."""

from __future__ import annotations

import base64
import io
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from flamingo.serve.examples import example_prompts

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
    flags += " --disable-component-update --disable-sync --disable-dev-shm-usage --window-size=1400,1200"
    for flag in flags.split():
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
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


def test_page_builds_a_few_shot_prompt_and_streams_the_answer(live_server, browser, pipe, images, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    paths = []
    for i, image in enumerate(images[:2]):
        paths.append(tmp_path / f"upload{i}.png")
        image.save(paths[-1])
    wait = WebDriverWait(browser, 120)
    browser.get(live_server)
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#examples .example")) >= 2

    browser.find_element(By.CSS_SELECTOR, "#shot-1 .remove").click()  # keep one demonstration
    browser.find_element(By.CSS_SELECTOR, "#shot-0 input[type=file]").send_keys(str(paths[0]))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#shot-0 .pick img"))
    browser.find_element(By.CSS_SELECTOR, "#shot-0 .text").send_keys("Output:a red circle")
    browser.find_element(By.CSS_SELECTOR, "#query input[type=file]").send_keys(str(paths[1]))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#query .pick img"))

    chips = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#preview .chip")]
    assert chips == ["<image> 1", "<image> 2"]  # the preview shows which image each text belongs to
    browser.find_element(By.ID, "generate").click()
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-done") == "1")
    shown = browser.find_element(By.ID, "output").get_property("textContent")
    _save_artifact(browser, tmp_path, "serve_demo.png")

    expected = pipe(
        [images[0], "Output:a red circle<|endofchunk|>\n", images[1], "Output:"], max_new_tokens=20
    )
    assert expected, "the tiny model should generate some text for this prompt"
    assert shown == expected
    assert browser.find_element(By.ID, "status").text.startswith("done")

    # A ready-made example (VQA, beam search) fills the builder and runs with its own settings.
    browser.find_elements(By.CSS_SELECTOR, "#examples .example")[1].click()
    assert browser.find_element(By.ID, "mode").get_property("value") == "beam"
    browser.find_element(By.ID, "generate").click()
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-done") == "1")
    _save_artifact(browser, tmp_path, "serve_demo_example.png")
    example = example_prompts()[1]
    row = []
    for shot in example["shots"]:
        row += [_image(shot["image"]), shot["text"] + "<|endofchunk|>\n"]
    row += [_image(example["query"]["image"]), example["query"]["text"]]
    expected = pipe(row, max_new_tokens=5, num_beams=3)
    assert browser.find_element(By.ID, "output").get_property("textContent") == (
        expected or "(the model stopped at once: empty answer)"
    )


def _image(data_url: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB")

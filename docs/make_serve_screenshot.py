"""Regenerate ``docs/serve_demo.png``: the demo page answering a novel-label episode with the quickstart's model.

    .venv/bin/flamingo quickstart --out runs/quickstart          # once: trains the model the page serves
    .venv/bin/python docs/make_serve_screenshot.py              # needs Debian's chromium and chromium-driver

Starts ``flamingo serve`` on ``runs/quickstart/model``, shows two objects under invented names the model never
saw in training (two pictures each, drawn like the quickstart's world), asks about a new picture of one of them,
and saves a screenshot of the page once the answer is in. Prints the answer and what the Python pipeline says
for the same prompt (they must agree).
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {seconds:.0f}s")


def episode(run: Path, seed: int) -> tuple[list[tuple[Path, str]], Path, str]:
    """Four demonstrations (two held-out names, two pictures each) and a query picture, saved as PNGs."""
    from flamingo.quickstart import world

    rng = random.Random(f"screenshot-{seed}")
    names = json.loads((run / "world" / "names.json").read_text())["heldout"]
    classes = rng.sample(world.training_combos(), 2)
    chosen = rng.sample(names, 2)
    folder = Path(tempfile.mkdtemp(prefix="flamingo-screenshot-"))
    demos = []
    for k, c in enumerate([0, 1, 1, 0]):
        path = folder / f"demo{k}.png"
        world.draw_scene(world.Scene(*classes[c], 1), rng).save(path)  # 32 px, as in training
        demos.append((path, chosen[c]))
    query = folder / "query.png"
    world.draw_scene(world.Scene(*classes[1], 1), rng).save(query)
    return demos, query, chosen[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", default="runs/quickstart", help="quickstart output folder")
    parser.add_argument("--out", default=str(ROOT / "docs" / "serve_demo.png"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from flamingo.pipeline import FlamingoPipeline

    run = Path(args.run)
    demos, query, answer = episode(run, args.seed)
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "flamingo.cli", "serve", "--model", str(run / "model"), "--port", str(port)]
    )
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1300,1560"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_for(url + "/health")
        driver.get(url)
        wait = WebDriverWait(driver, 120, poll_frequency=0.2)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#preview .fl-chip"))
        shots = driver.find_element(By.CSS_SELECTOR, "#shots input[type=number]")
        shots.send_keys(Keys.CONTROL, "a")
        shots.send_keys(str(len(demos)), Keys.TAB)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#preview .fl-chip")) == len(demos) + 1)
        for k, (path, name) in enumerate(demos, start=1):
            driver.find_element(By.CSS_SELECTOR, f"#demo-{k}-image input[type=file]").send_keys(str(path))
            box = driver.find_element(By.CSS_SELECTOR, f"#demo-{k}-text textarea")
            box.send_keys(Keys.CONTROL, "a")
            box.send_keys(name)
        driver.find_element(By.CSS_SELECTOR, "#query-image input[type=file]").send_keys(str(query))
        box = driver.find_element(By.CSS_SELECTOR, "#query-text textarea")
        box.send_keys(Keys.CONTROL, "a", Keys.DELETE)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#preview .fl-chip img")) == len(demos) + 1)
        max_new = driver.find_element(By.CSS_SELECTOR, "#max-new-tokens input[type=number]")
        max_new.send_keys(Keys.CONTROL, "a")
        max_new.send_keys("1", Keys.TAB)
        driver.find_element(By.ID, "generate").click()
        wait.until(lambda d: d.find_element(By.ID, "status").text.startswith(("done", "error")))
        shown = driver.find_element(By.CSS_SELECTOR, "#answer textarea").get_property("value")
        time.sleep(0.5)
        driver.save_screenshot(args.out)
    finally:
        driver.quit()
        server.terminate()
        server.wait(timeout=30)
    pipe = FlamingoPipeline.from_pretrained(str(run / "model"))
    row = [x for path, name in demos for x in (path, name + "<|endofchunk|>\n")] + [query]
    expected = pipe(row, max_new_tokens=1)
    print(f"page answered {shown!r}, pipeline {expected!r}, true name {answer!r}; wrote {args.out}")


if __name__ == "__main__":
    main()

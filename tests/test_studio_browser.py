"""The studio page in a real browser: Debian's chromium, headless, driven by selenium.

One `scenecomp-studio` (the console script, on a tiny real model) serves the whole module.
Needs ``apt-get install -y chromium chromium-driver``; without them these tests fail saying
so, unless SCENECOMP_SKIP_BROWSER=1, which skips them.
"""

from __future__ import annotations

import base64
import io
import os
import selectors
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_tiny_nets
from scenecomp.compose import bundle_dict, save_bundle

pytestmark = pytest.mark.browser

CATEGORIES = ["tree", "house", "sun"]
R = 16  # the tiny model's canvas; the page shows it 512 px wide: 32 px per model pixel
SCALE = 512 / R
BIN = Path(sys.executable).parent
INSTALL = "apt-get install -y chromium chromium-driver"


def browser_paths() -> tuple[str, str]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        why = f"the studio's browser tests need Debian's chromium and its driver: {INSTALL} (as root)"
        if os.environ.get("SCENECOMP_SKIP_BROWSER") == "1":
            pytest.skip(f"{why}; skipped since SCENECOMP_SKIP_BROWSER=1")
        pytest.fail(f"{why}, or set SCENECOMP_SKIP_BROWSER=1 to skip these tests", pytrace=False)
    return chromium, driver


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``scenecomp-studio --checkpoint tiny.pt --port 0`` as a user starts it; yields (url, bundle)."""
    browser_paths()
    from scenecomp import Composer

    bundle = tmp_path_factory.mktemp("studio") / "tiny.pt"
    composer = Composer(*make_tiny_nets(), CATEGORIES)
    save_bundle(bundle, bundle_dict(CATEGORIES, background=composer.background_net, foreground=composer.foreground_net))
    process = subprocess.Popen(
        [str(BIN / "scenecomp-studio"), "--checkpoint", str(bundle), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line, deadline = "", time.monotonic() + 300  # a busy machine may take minutes to import torch
        with selectors.DefaultSelector() as sel:
            sel.register(process.stdout, selectors.EVENT_READ)
            while "open http" not in line:
                if (
                    process.poll() is not None
                    or time.monotonic() > deadline
                    or not sel.select(deadline - time.monotonic())
                ):
                    pytest.fail(
                        f"scenecomp-studio did not start: {line}{process.stdout.read() if process.poll() is not None else ''}"
                    )
                line = process.stdout.readline()
        url = line.split("open ", 1)[1].split()[0]
        yield url, bundle
    finally:
        process.terminate()
        process.wait(30)


@pytest.fixture(scope="module")
def browser(server, tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = browser_paths()
    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(argument)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.downloads = downloads
    driver.get(server[0])
    wait_for_version(driver, 1)
    yield driver
    driver.quit()


def wait_for_version(driver, version: int, timeout: float = 120) -> dict:
    """Wait until the page has shown state number ``version``; returns that state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if driver.execute_script(
            "return (window.studio && window.studio.version) || 0"  # 0 until the page script has run
        ) >= version and "busy" not in driver.find_element("tag name", "body").get_attribute("class"):
            return driver.execute_script("return window.studio.state")
        time.sleep(0.05)
    raise AssertionError(f"the page never showed state {version}; message: {message(driver)!r}")


def click_and_wait(driver, element_id: str) -> dict:
    version = driver.execute_script("return window.studio.version")
    driver.find_element("id", element_id).click()
    return wait_for_version(driver, version + 1)


def message(driver) -> str:
    box = driver.find_element("id", "message")
    return box.text if box.is_displayed() else ""


def pixels(data_url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"))


def drag(driver, start, end):
    """Drag on the scene canvas between two points given in model pixels."""
    from selenium.webdriver import ActionChains

    view = driver.find_element("id", "view")

    def offset(p):
        return (round(p[0] * SCALE - 256), round(p[1] * SCALE - 256))  # Selenium offsets are from the centre

    (x0, y0), (x1, y1) = offset(start), offset(end)
    ActionChains(driver).move_to_element_with_offset(view, x0, y0).click_and_hold().move_by_offset(
        (x1 - x0) // 2, (y1 - y0) // 2
    ).move_by_offset(x1 - x0 - (x1 - x0) // 2, y1 - y0 - (y1 - y0) // 2).release().perform()


def test_draw_a_box_add_a_house_reroll_undo_and_render_the_downloaded_layout(browser, server, tmp_path_factory):
    from selenium.webdriver.support.ui import Select

    driver = browser
    background = pixels(driver.execute_script("return window.studio.state.image"))
    driver.find_element("css selector", "input[name=tool][value=box]").click()
    drag(driver, (3.2, 4.2), (9.4, 10.3))  # pixel centres 3.5..8.5 x 4.5..9.5 lie inside
    box = np.zeros((R, R), bool)
    box[4:10, 3:9] = True
    drawn = np.array(driver.execute_script("return Array.from(window.studio.mask)"), bool).reshape(R, R)
    assert np.array_equal(drawn, box)

    Select(driver.find_element("id", "add-category")).select_by_visible_text("house")
    state = click_and_wait(driver, "add")
    assert [o["category"] for o in state["objects"]] == ["house"] and state["objects"][0]["bbox"] == [3, 4, 6, 6]
    added = pixels(state["image"])
    assert np.array_equal(added[~box], background[~box]) and (added[box] != background[box]).any()
    assert len(driver.find_elements("css selector", "#strip img")) == 2

    seed = state["objects"][0]["seed"]
    state = click_and_wait(driver, "reroll")  # the new house is selected after adding it
    rerolled = pixels(state["image"])
    assert state["objects"][0]["seed"] != seed
    assert np.array_equal(rerolled[~box], background[~box]) and (rerolled[box] != added[box]).any()

    state = click_and_wait(driver, "undo")
    assert state["objects"][0]["seed"] == seed and np.array_equal(pixels(state["image"]), added)

    driver.find_element("id", "dl-layout").click()
    layout = driver.downloads / "layout.json"
    deadline = time.monotonic() + 60
    while not layout.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert layout.exists(), f"no layout.json in {driver.downloads}: {os.listdir(driver.downloads)}"
    out = tmp_path_factory.mktemp("rendered")
    subprocess.run(
        [str(BIN / "scenecomp-render"), str(layout), "--out", str(out), "--checkpoint", str(server[1]), "--quiet"],
        check=True,
        timeout=600,
    )
    assert np.array_equal(np.asarray(Image.open(out / "layout_s0000.png").convert("RGB")), added)

    shot = tmp_path_factory.mktemp("screenshots") / "studio.png"
    driver.save_screenshot(str(shot))
    print(f"screenshot of the studio page: {shot}")


def test_bad_input_shows_a_clear_message_and_tabs_keep_their_own_scenes(browser, tmp_path):
    driver = browser
    driver.find_element("id", "clear-mask").click()
    version = driver.execute_script("return window.studio.version")
    driver.find_element("id", "add").click()
    deadline = time.monotonic() + 60
    while not message(driver) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "mask is empty: it covers no pixel of the 16x16 canvas" in message(driver)
    assert driver.execute_script("return window.studio.version") == version

    bad = tmp_path / "broken.json"
    bad.write_text('{"size": [16, 16], "objects": [{"category": "tree", "bbox": [1, 1, 4, 4]},]}')
    driver.find_element("id", "open-layout").send_keys(str(bad))
    deadline = time.monotonic() + 60
    while "broken.json" not in message(driver) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert message(driver).startswith("broken.json: malformed JSON at line 1, column 75: Expecting value")

    first = driver.execute_script("return window.studio.state")
    state = click_and_wait(driver, "bg-reroll")  # the server keeps serving; the message goes
    assert state["background_seed"] != first["background_seed"] and not message(driver)
    assert len(state["objects"]) == len(first["objects"])

    original, url = driver.current_window_handle, driver.current_url
    driver.switch_to.new_window("tab")
    try:
        driver.get(url)
        other = wait_for_version(driver, 1)
        assert other["session"] != state["session"] and other["objects"] == []
    finally:
        driver.close()
        driver.switch_to.window(original)
    assert driver.execute_script("return window.studio.state.session") == state["session"]

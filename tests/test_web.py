"""The web page at `/` of `blockframe serve`, in a real headless Chromium (Debian `chromium`
and `chromium-driver`, driven by selenium): the page loads from the package (no CDN), lists
the files as a tree with sizes, tiers and status, downloads return the right bytes through
the ranged endpoint (with the token when the server has one), and it fits a phone's width.
BLOCKFRAME_SCREENSHOT=path saves a screenshot of the page (docs/web.png in the README)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from test_serve import Server, build

from conftest import data

# Debian's packages, installed by scripts/setup (no skip when missing: CI must run this).
CHROMIUM = "/usr/bin/chromium"
DRIVER = "/usr/bin/chromedriver"
FILES = {
    "readme.txt": 3_000,  # tier 1
    "photos/2024/img_001.jpg": 50_000,  # tier 2
    "photos/2024/img_002.jpg": 15_000,
    "datasets/big.bin": 9_000_017,  # tier 3; more than one 8 MiB range request
}


def content(name: str) -> bytes:
    return data(FILES[name], seed=len(name))


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[tuple[WebDriver, Path]]:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=1000,700")
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    try:
        yield driver, downloads
    finally:
        driver.quit()


def wait(until: Callable[[], object], timeout: float = 20) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = until()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def loaded(driver: WebDriver) -> bool:
    return driver.execute_script("return document.body.dataset.loaded === 'true'") is True


def rows(driver: WebDriver) -> dict[str, list[str]]:
    out = {}
    for row in driver.find_elements(By.CSS_SELECTOR, ".row.file"):
        cells = [c.text for c in row.find_elements(By.CSS_SELECTOR, "span")]
        out[row.get_attribute("data-name") or ""] = cells
    return out


def download(driver: WebDriver, downloads: Path, name: str) -> bytes:
    row = driver.find_element(By.CSS_SELECTOR, f'.row.file[data-name="{name}"]')
    row.find_element(By.CSS_SELECTOR, ".get a").click()
    target = downloads / name.rsplit("/", 1)[-1]

    def done() -> bool:
        partial = list(downloads.glob("*.crdownload"))
        return target.exists() and not partial and target.stat().st_size == FILES[name]

    wait(done, 30)
    return target.read_bytes()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = build(tmp_path_factory.mktemp("web"), FILES)
    server = Server(env)
    yield server
    assert server.stop() == 0, server.log
    assert not any("Traceback" in x for x in server.log), server.log


def test_page_and_assets_come_from_the_package(served: Server) -> None:
    with served.client() as c:
        page = c.get("/")
        assets = [c.get(f"/ui/{name}") for name in ("app.js", "style.css")]
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert all(a.status_code == 200 for a in assets)
    for body in [page.text, *(a.text for a in assets)]:
        assert "http://" not in body and "https://" not in body  # no CDN


def test_tree_download_and_phone_width(
    served: Server, browser: tuple[WebDriver, Path], tmp_path: Path
) -> None:
    driver, downloads = browser
    driver.get(served.url + "/")
    wait(lambda: loaded(driver))
    assert not driver.find_element(By.ID, "auth").is_displayed()  # no token needed
    listed = rows(driver)
    assert set(listed) == set(FILES)
    name, size, tier, status, _ = listed["photos/2024/img_001.jpg"]
    assert (name, size, tier, status) == ("img_001.jpg", "48.8 KiB", "2", "ok")
    assert listed["datasets/big.bin"][1:4] == ["8.6 MiB", "3", "ok"]
    assert listed["readme.txt"][1:3] == ["2.9 KiB", "1"]
    folders = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "summary .name")]
    assert folders == ["datasets/", "photos/", "2024/"]
    summary = driver.find_element(By.ID, "summary").text
    assert summary.startswith("4 files, ") and "last scrub: never" in summary
    shot = tmp_path / "web.png"
    driver.save_screenshot(str(shot))
    if os.environ.get("BLOCKFRAME_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["BLOCKFRAME_SCREENSHOT"])
    for name in ("photos/2024/img_001.jpg", "datasets/big.bin"):
        assert download(driver, downloads, name) == content(name)
    # The downloads went through the ranged endpoint (big.bin in two requests).
    with served.client() as c:
        metrics = c.get("/metrics").text
    assert 'blockframe_http_requests_total{status="206"} 3' in metrics
    # A phone: nothing wider than the screen.
    driver.set_window_size(390, 844)
    driver.refresh()
    wait(lambda: loaded(driver))
    width = driver.execute_script("return [document.documentElement.scrollWidth, innerWidth]")
    assert width[0] <= width[1], width


def test_token_is_asked_for_and_sent(tmp_path: Path, browser: tuple[WebDriver, Path]) -> None:
    env = build(tmp_path, {"readme.txt": 3_000})
    server = Server(env, extra_env={"BLOCKFRAME_TOKEN": "s3cret"})
    try:
        driver, downloads = browser
        driver.get(server.url + "/")
        form = driver.find_element(By.ID, "auth")
        wait(form.is_displayed)
        assert not rows(driver)
        driver.find_element(By.ID, "token").send_keys("s3cret")
        form.find_element(By.TAG_NAME, "button").click()
        wait(lambda: loaded(driver))
        assert list(rows(driver)) == ["readme.txt"]
        assert download(driver, downloads, "readme.txt") == content("readme.txt")
    finally:
        assert server.stop() == 0, server.log


def test_a_damaged_file_shows_as_repaired_after_a_scrub(
    tmp_path: Path, browser: tuple[WebDriver, Path]
) -> None:
    files = {"readme.txt": 3_000, "photos/2024/img_001.jpg": 50_000}
    env = build(tmp_path, files)
    victim = env.archive.get("photos/2024/img_001.jpg")
    segment = victim.path / "segments" / "segment_1.dat"
    raw = bytearray(segment.read_bytes())
    raw[100] ^= 0xFF
    segment.write_bytes(bytes(raw))
    server = Server(env)
    try:
        driver, _ = browser
        driver.get(server.url + "/")
        wait(lambda: loaded(driver))
        # Never scrubbed: the manifest status only.
        assert rows(driver)["photos/2024/img_001.jpg"][3] == "ok"
        assert "last scrub: never" in driver.find_element(By.ID, "summary").text
        r = env.run("health")
        assert r.returncode == 0, r.stderr
        driver.refresh()
        wait(lambda: loaded(driver))
        listed = rows(driver)
        assert listed["photos/2024/img_001.jpg"][3] == "repaired · margin 2"
        assert listed["readme.txt"][3] == "healthy · margin 2"
        assert "last scrub: never" not in driver.find_element(By.ID, "summary").text
        # And the API says the same for machines.
        with server.client() as c:
            scrub = {f["name"]: f["scrub"] for f in c.get("/api/files").json()}
        assert scrub["photos/2024/img_001.jpg"]["status"] == "repaired"
        assert scrub["readme.txt"] == {**scrub["readme.txt"], "status": "healthy", "margin": 2}
    finally:
        assert server.stop() == 0, server.log

"""The operator page in a real headless Chromium (Debian's chromium + chromium-driver, driven by selenium; nothing
is downloaded): it loads, shows the frames of a video-file source arriving, a region drawn with the mouse reaches
the server, a class enrolled through the page changes the live prediction, renaming and forgetting it through the
page change it again. Screenshots are saved as artifacts ($METAEDGE_TEST_ARTIFACTS, default build/test-artifacts).
Skips, saying why, where Chromium or its driver is missing (.ci/run installs them)."""
import os
import shutil
import time

import pytest

from tests.serve.harness import ROOT, Server, make_token, png

webdriver = pytest.importorskip("selenium.webdriver")
cv2 = pytest.importorskip("cv2")

pytestmark = pytest.mark.timeout(300)
BOX = (60, 40, 96, 96)
ARTIFACTS = os.environ.get("METAEDGE_TEST_ARTIFACTS", os.path.join(ROOT, "build", "test-artifacts"))


def _chromium() -> tuple[str, str]:
    browser = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                   None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("no headless Chromium here (Debian: apt-get install chromium chromium-driver; .ci/run installs "
                    f"them): browser={browser}, chromedriver={driver}")
    return browser, driver


@pytest.fixture
def browser():
    from selenium.webdriver.chrome.service import Service
    binary, driver_path = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1440,1000",
                "--force-device-scale-factor=1", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager fetch a browser or driver
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait_for(condition, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = condition()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 - the page is still changing under us: try again
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


@pytest.fixture(scope="module")
def video(tmp_path_factory, objects):
    """A looping scene: the red object of shape 0 at BOX on a textured background, 20 frames at 10 fps."""
    from tests.runtime.scenes import scene, write_video
    root = tmp_path_factory.mktemp("page-video")
    frames = [scene(objects["shape0-r"][i % 3], BOX, height=200, width=280, seed=i) for i in range(20)]
    return write_video(root / "scene.mkv", frames, fps=10)


def _text(driver, element_id):
    return driver.find_element("id", element_id).text


def click(driver, css: str, what: str):
    """Find and click, again if the page re-rendered the element in between."""
    def attempt():
        driver.find_element("css selector", css).click()
        return True
    wait_for(attempt, timeout=20, what=what)


def test_page_live_view_enroll_rename_forget(browser, bundle, video, objects, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    os.makedirs(ARTIFACTS, exist_ok=True)
    tokens = tmp_path / "tokens.json"
    operator = make_token(tokens, "alice", "operator")
    with Server(bundle, tmp_path / "g.metaedge", "--source", video, "--rate-limit", "off", tokens=tokens,
                workdir=tmp_path) as server:
        browser.get(f"{server.url}/#token={operator}")
        assert browser.title.startswith("metaedge")
        wait_for(lambda: "alice (operator)" in _text(browser, "who"), what="the token's name and role")
        # frames arrive: the frame counter moves and the MJPEG image has pixels
        first = int(wait_for(lambda: _text(browser, "frame-count").isdigit() and _text(browser, "frame-count"),
                             what="a first frame"))
        wait_for(lambda: int(_text(browser, "frame-count")) != first, what="more frames")
        assert browser.execute_script("return document.getElementById('live-img').naturalWidth") == 280
        assert _text(browser, "live-label") == "no classes yet"

        # draw the region of interest with the mouse (image is shown at its natural size: 1 px = 1 px)
        browser.find_element("id", "roi-draw").click()
        canvas = browser.find_element("id", "overlay")
        w = browser.execute_script("return arguments[0].clientWidth", canvas)
        h = browser.execute_script("return arguments[0].clientHeight", canvas)
        scale = w / 280
        x, y, bw, bh = BOX
        ActionChains(browser).move_to_element_with_offset(canvas, int((x - w / scale / 2) * scale) + 1,
                                                          int((y - h / scale / 2) * scale) + 1) \
            .click_and_hold().move_by_offset(int(bw * scale), int(bh * scale)).release().perform()
        with server.client(operator) as api:
            roi = wait_for(lambda: api.get("/v1/live").json().get("roi"), what="the drawn region at the server")
        assert len(roi) == 1 and all(abs(a - b) <= 3 for a, b in zip(roi[0], BOX)), roi

        # enroll through the page: the live prediction becomes the new class
        browser.find_element("id", "enroll-label").send_keys("widget")
        shots = browser.find_element("id", "enroll-shots")
        shots.clear()
        shots.send_keys("3")
        assert _text(browser, "enroll-button") == 'enroll as "widget"'
        browser.find_element("id", "enroll-button").click()
        wait_for(lambda: browser.find_elements("css selector", "#classes tbody tr[data-label='widget']"),
                 what="the new class in the list")
        row = browser.find_element("css selector", "#classes tbody tr[data-label='widget']")
        assert row.find_elements("tag name", "td")[1].text == "3"
        count = browser.find_element("id", "class-count")  # the open-set state, as `metaedge classes list` says it
        assert "unknowns not rejected" in count.text and "no threshold" in count.get_attribute("title")
        wait_for(lambda: _text(browser, "live-label") == "widget", what="the live prediction to become the class")

        # a second class through the API, so that the charts and the list have something to show; a few predictions
        with server.client(operator) as api:
            api.post("/v1/classes/bolt/shots", files=[("image", (f"{i}.png", png(im), "image/png"))
                                                      for i, im in enumerate(objects["shape1-g"][:4])])
            for im in objects["shape1-g"][4:] + objects["shape0-r"][3:]:
                api.post("/v1/predict", content=png(im), headers={"Content-Type": "image/png"})
        wait_for(lambda: browser.find_elements("css selector", "#classes tbody tr[data-label='bolt']"),
                 what="the class enrolled through the API")
        wait_for(lambda: "enroll" in _text(browser, "history") and "alice" in _text(browser, "history"),
                 what="the history")
        time.sleep(4.5)  # two more stats polls: the charts draw their first points
        wait_for(lambda: browser.execute_script("return page.stats.filter((p) => p.mean !== null).length") > 0,
                 what="a latency point in the charts")
        browser.save_screenshot(os.path.join(ARTIFACTS, "serve_page.png"))

        # rename through the page: the prediction follows
        click(browser, "#classes tbody tr[data-label='widget'] button.rename", "the rename button")
        field = browser.find_element("css selector", "input.rename-input")
        field.clear()
        field.send_keys("gadget")
        browser.find_element("css selector", "button.rename-save").click()
        wait_for(lambda: _text(browser, "live-label") == "gadget", what="the renamed class in the live view")

        # forget through the page (two clicks: arm, confirm): no prediction of it any more
        click(browser, "#classes tbody tr[data-label='gadget'] button.forget", "forget (arming it)")
        click(browser, "#classes tbody tr[data-label='gadget'] button.forget.danger", "forget (confirming it)")
        wait_for(lambda: not browser.find_elements("css selector", "#classes tbody tr[data-label='gadget']"),
                 what="the class to leave the list")
        wait_for(lambda: _text(browser, "live-label") == "bolt" or "unknown" in _text(browser, "live-label"),
                 what="the prediction to move off the forgotten class")
        history = wait_for(lambda: "forget" in _text(browser, "history") and _text(browser, "history"),
                           what="the forget in the history")
        assert "rename" in history and "by alice" in history
        browser.save_screenshot(os.path.join(ARTIFACTS, "serve_page_after.png"))
        logs = browser.get_log("browser") if hasattr(browser, "get_log") else []
        severe = [entry for entry in logs if entry.get("level") == "SEVERE" and "favicon" not in entry["message"]]
        assert not severe, severe


def test_page_without_a_token_asks_for_one(browser, bundle, tmp_path):
    tokens = tmp_path / "tokens.json"
    make_token(tokens, "bob", "viewer")
    with Server(bundle, tmp_path / "g.metaedge", tokens=tokens, workdir=tmp_path) as server:
        browser.get(server.url + "/")
        wait_for(lambda: "a token is needed" in _text(browser, "facts"), what="the page to say it needs a token")
        assert browser.find_element("id", "token-form").is_displayed()

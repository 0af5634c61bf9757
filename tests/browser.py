"""Headless-Chromium helpers for the end-to-end UI tests (a helper module, not a test file).

Everything is addressed by Gradio ``elem_id`` (the ``id`` attribute of the component's outer block), so the tests
survive layout changes. DOM facts these helpers rely on (checked against Gradio 6.31):

* multiselect ``gr.Dropdown``: ``#<elem_id> input[role=combobox]``; typing filters the options, which render inside
  the same block as ``li[data-testid="dropdown-option"][role=option]`` whose ``aria-label`` is the option's exact
  label (the visible text also carries a leading check mark). Picked values are ``#<elem_id> .token`` chips. The
  list stays open after a pick and then covers the components below it, so ``pick_dropdown`` closes it (Escape).
* ``gr.Button``: the ``<button>`` itself carries the id.
* ``gr.Error``: a toast ``[data-testid="toast-body"]`` with class ``error`` and the message in
  ``[data-testid="toast-text"]``; it disappears by itself after ~10 s.
* ``gr.Dataframe``: a virtualised grid; visible body cells are ``#<elem_id> [role=gridcell][data-row][data-col]``.
* ``gr.Radio``: one ``label`` per option, holding ``input[type=radio][value=<value>]`` (``aria-checked`` says whether
  it is picked) and a ``span`` with the option's visible label.
* ``gr.Examples`` (no id unless the app gives one): a block whose ``.label`` reads the examples' label, with one
  ``button.gallery-item`` per example; a one-input multiselect example shows its values joined by ", ".
* ``gr.Label``: one ``button.confidence-set`` per class, whose ``meter`` carries the class (``aria-label``) and its
  share (``value``, 0..1).
* ``gr.BarPlot``: a vega-embed chart drawn as SVG (not canvas): ``text`` elements under ``g.role-axis-label``
  (x-axis: the ``g.role-axis`` whose ``aria-label`` starts with "X-axis") and ``g.role-title-text``; bars are the
  ``path`` elements of ``g.role-mark``. An empty plot (value None) draws no SVG at all.
* Every component's block has a ``[data-testid=status-tracker]`` that loses its ``hide`` class while an event that
  outputs to it runs (the old value stays visible under it): ``updated`` waits for one such run to finish.

System requirements: Debian's ``chromium`` and ``chromium-driver`` (``make browser`` installs them) and ``selenium``
(requirements-dev.txt). ``CHROMIUM_BIN`` / ``CHROMEDRIVER_BIN`` override the binary paths.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

CHROMIUM = os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER_BIN", "/usr/bin/chromedriver")
CHROME_ARGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-proxy-server",
)  # plus --window-size and a fresh --user-data-dir per browser
TOAST = '[data-testid="toast-body"]'
TOAST_TEXT = '[data-testid="toast-text"]'
DROPDOWN_OPTION = 'li[data-testid="dropdown-option"]'


def require_chromium() -> None:
    """Skip the calling test when Chromium or its driver is missing, or fail it where ``CHROMIUM_REQUIRED=1`` (CI)."""
    import pytest

    why = missing()
    if why:
        if os.environ.get("CHROMIUM_REQUIRED") == "1":
            pytest.fail(f"CHROMIUM_REQUIRED=1 but {why}")
        pytest.skip(why)


def missing() -> str | None:
    """Why a browser test cannot run here (None when chromium, chromedriver and selenium are all available)."""
    absent = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if absent:
        return f"{' and '.join(absent)} not found: run `make browser` (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -r requirements-dev.txt)"
    return None


# ---------------------------------------------------------------------------------------------------------------
# the app under test


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an http_proxy for localhost
    try:
        with opener.open(url, timeout=2) as response:
            return response.status < 500
    except urllib.error.HTTPError as err:
        return err.code < 500
    except (OSError, urllib.error.URLError):
        return False


@contextlib.contextmanager
def serve(cmd: list[str], port: int, timeout: float = 120, cwd: str | Path | None = None,
          env: dict | None = None) -> Iterator[subprocess.Popen]:
    """Run ``cmd`` (which must listen on ``port``) until ``http://127.0.0.1:<port>/`` answers; yield the process.

    The process gets its own session and is terminated (then killed) on exit. Its stdout+stderr go to a temp log
    whose tail is in the error when it exits early or does not answer within ``timeout`` seconds.
    Typical pytest use: ``with serve([sys.executable, "app.py", "--port", str(port)], port) as proc: yield url``."""
    log = tempfile.NamedTemporaryFile("w+b", prefix="serve-", suffix=".log", delete=False)
    full_env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"

    def tail() -> str:
        log.flush()
        return Path(log.name).read_bytes()[-3000:].decode(errors="replace")

    try:
        deadline = time.monotonic() + timeout
        while not _answers(url):
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd} exited with {proc.returncode} before serving {url}:\n{tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{cmd} did not answer on {url} within {timeout:.0f}s:\n{tail()}")
            time.sleep(0.5)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        log.close()
        with contextlib.suppress(OSError):
            os.unlink(log.name)


def app_command(port: int) -> list[str]:
    """The command that serves this project's demo on ``port`` (with the running interpreter)."""
    return [sys.executable, "app.py", "--port", str(port)]


# ---------------------------------------------------------------------------------------------------------------
# the browser


@contextlib.contextmanager
def chromium(width: int = 1400, height: int = 1800):
    """A headless Chromium WebDriver with a fresh temporary profile; quit and profile removed on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # with both paths given, Selenium Manager never downloads anything
    for arg in CHROME_ARGS:
        options.add_argument(arg)
    options.add_argument(f"--window-size={width},{height}")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(60)
        yield driver
    finally:
        with contextlib.suppress(Exception):
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def open_app(driver, url: str, ready_elem_id: str, timeout: float = 60) -> None:
    """Load the Gradio page and wait until the component ``ready_elem_id`` is rendered."""
    driver.get(url)
    element(driver, ready_elem_id, timeout)


def _wait(driver, timeout: float):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2)


def element(driver, elem_id: str, timeout: float = 30):
    """The component whose ``elem_id`` is ``elem_id`` (waits until it is in the DOM)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    return _wait(driver, timeout).until(EC.presence_of_element_located((By.ID, elem_id)),
                                        f"no element with id {elem_id!r}")


def _scroll_to(driver, el) -> None:
    driver.execute_script("arguments[0].scrollIntoView({block: 'center', inline: 'nearest'});", el)


def click(driver, elem_id: str, timeout: float = 30) -> None:
    """Click the ``gr.Button`` (or any element) with this ``elem_id`` once it is visible and enabled."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    el = element(driver, elem_id, timeout)
    _scroll_to(driver, el)
    _wait(driver, timeout).until(EC.element_to_be_clickable((By.ID, elem_id)), f"#{elem_id} is not clickable").click()


def pick_dropdown(driver, elem_id: str, texts: str | Iterable[str], timeout: float = 15) -> list[str]:
    """Pick each of ``texts`` (exact option labels, in order) in the ``gr.Dropdown`` with this ``elem_id``.

    Types each label into the combobox, clicks the option whose label matches exactly, then closes the list.
    Returns the labels of every picked chip afterwards (multiselect tokens)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    texts = [texts] if isinstance(texts, str) else list(texts)
    block = element(driver, elem_id, timeout)
    box = block.find_element(By.CSS_SELECTOR, "input[role=combobox], input")
    for wanted in texts:
        _scroll_to(driver, box)
        box.click()
        if box.get_attribute("value"):  # a single-select dropdown shows its value in the box; clear it first
            box.send_keys(Keys.CONTROL, "a", Keys.BACKSPACE)  # (never Backspace an empty box: it drops the last chip)
        box.send_keys(wanted)

        def option(_, wanted=wanted):
            for opt in block.find_elements(By.CSS_SELECTOR, DROPDOWN_OPTION):
                label = opt.get_attribute("aria-label") or opt.text.replace("\u2713", "").strip()
                if label == wanted:
                    return opt
            return False

        def shown() -> list[str]:
            return [o.get_attribute("aria-label") for o in block.find_elements(By.CSS_SELECTOR, DROPDOWN_OPTION)]

        opt = _wait(driver, timeout).until(option, f"#{elem_id}: no option labelled {wanted!r}")
        if opt.get_attribute("aria-selected") != "true":  # clicking a picked option would un-pick it
            opt.click()

        def picked(_, wanted=wanted) -> bool:
            if wanted in dropdown_values(driver, elem_id):  # multiselect: a chip
                return True
            return box.get_attribute("aria-expanded") != "true" and box.get_attribute("value") == wanted  # single

        _wait(driver, timeout).until(picked, f"#{elem_id}: {wanted!r} was not picked (options shown: {shown()[:10]})")
    box.send_keys(Keys.ESCAPE)  # the open list covers the components below it
    _wait(driver, timeout).until(lambda _: box.get_attribute("aria-expanded") != "true", f"#{elem_id} stays open")
    return dropdown_values(driver, elem_id)


def clear_dropdown(driver, elem_id: str, timeout: float = 15) -> None:
    """Remove every picked chip of a multiselect ``gr.Dropdown`` (Backspace in its empty box drops the last one)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = element(driver, elem_id, timeout).find_element(By.CSS_SELECTOR, "input[role=combobox], input")
    _scroll_to(driver, box)
    box.click()
    for _ in range(len(dropdown_values(driver, elem_id))):
        box.send_keys(Keys.BACKSPACE)
    _wait(driver, timeout).until(lambda _: not dropdown_values(driver, elem_id), f"#{elem_id} keeps chips")
    box.send_keys(Keys.ESCAPE)


def dropdown_values(driver, elem_id: str) -> list[str]:
    """Labels of the picked chips of a multiselect ``gr.Dropdown``."""
    from selenium.webdriver.common.by import By

    return [t.text.strip() for t in element(driver, elem_id).find_elements(By.CSS_SELECTOR, ".token")]


def text(driver, elem_id: str) -> str:
    """The rendered text of the component (label included for most components)."""
    return element(driver, elem_id).text


def wait_text(driver, elem_id: str, predicate: Callable[[str], bool] | str, timeout: float = 30) -> str:
    """Wait until ``predicate(text of #elem_id)`` holds (a string predicate means "contains it"); return the text."""
    check = (lambda s: predicate in s) if isinstance(predicate, str) else predicate
    seen = {"text": ""}

    def ok(_):
        try:
            seen["text"] = text(driver, elem_id)
        except Exception:  # noqa: BLE001 - re-rendered between lookup and read: try again
            return False
        return seen["text"] if check(seen["text"]) else False

    from selenium.common.exceptions import TimeoutException

    try:
        return _wait(driver, timeout).until(ok)
    except TimeoutException:
        raise AssertionError(f"#{elem_id} text never matched within {timeout}s; last text: {seen['text']!r}") from None


def table_rows(driver, elem_id: str) -> list[list[str]]:
    """Body cells of a ``gr.Dataframe`` as rows of strings (only the rows its virtual scroller has rendered)."""
    from selenium.webdriver.common.by import By

    cells = element(driver, elem_id).find_elements(By.CSS_SELECTOR, "[role=gridcell][data-row][data-col]")
    rows: dict[int, dict[int, str]] = {}
    for cell in cells:
        rows.setdefault(int(cell.get_attribute("data-row")), {})[int(cell.get_attribute("data-col"))] = cell.text.strip()
    return [[row[c] for c in sorted(row)] for _, row in sorted(rows.items())]


@contextlib.contextmanager
def updated(driver, elem_id: str, timeout: float = 120) -> Iterator[None]:
    """Wait, after the ``with`` body (typically a click), until an event writing to ``#elem_id`` has run and finished.

    The old value stays on screen while an event runs, so waiting for text alone can read a stale answer. A
    MutationObserver installed before the body notes when the component's status tracker shows (even for a moment);
    on exit this waits until it was seen and is hidden again."""
    found = driver.execute_script("""
        const block = document.getElementById(arguments[0]);
        if (!block) return false;
        const busy = () => {
            const tracker = block.querySelector('[data-testid="status-tracker"]');
            return !!tracker && !tracker.classList.contains('hide');
        };
        block.__seenBusy = busy();
        block.__busy = busy;
        block.__observer = new MutationObserver(() => { if (busy()) block.__seenBusy = true; });
        block.__observer.observe(block, {attributes: true, childList: true, subtree: true});
        return true;""", elem_id)
    assert found, f"no element with id {elem_id!r}"
    yield
    done = """
        const block = document.getElementById(arguments[0]);
        return !!block && block.__seenBusy === true && !block.__busy();"""
    try:
        _wait(driver, timeout).until(lambda d: d.execute_script(done, elem_id),
                                     f"#{elem_id} was not updated within {timeout}s")
    finally:
        driver.execute_script("const b = document.getElementById(arguments[0]); if (b && b.__observer) "
                              "b.__observer.disconnect();", elem_id)


def radio_options(driver, elem_id: str) -> list[tuple[str, str]]:
    """(visible label, value) of every option of the ``gr.Radio`` with this ``elem_id``, in page order."""
    from selenium.webdriver.common.by import By

    return [(opt.find_element(By.TAG_NAME, "span").text.strip(), opt.find_element(By.TAG_NAME, "input").get_attribute("value"))
            for opt in element(driver, elem_id).find_elements(By.CSS_SELECTOR, "label")
            if opt.find_elements(By.CSS_SELECTOR, "input[type=radio]")]


def radio_value(driver, elem_id: str) -> str | None:
    """The value of the picked option of the ``gr.Radio`` with this ``elem_id`` (None when none is picked)."""
    from selenium.webdriver.common.by import By

    picked = element(driver, elem_id).find_elements(By.CSS_SELECTOR, 'input[type=radio][aria-checked="true"]')
    return picked[0].get_attribute("value") if picked else None


def pick_radio(driver, elem_id: str, option: str, timeout: float = 15) -> str:
    """Pick the option of the ``gr.Radio`` with this ``elem_id`` whose visible label or value is ``option``;
    wait until the page shows it picked; return its value."""
    from selenium.webdriver.common.by import By

    options = radio_options(driver, elem_id)
    value = next((v for label, v in options if option in (label, v)), None)
    assert value is not None, f"#{elem_id} has no option {option!r}; it offers {options}"
    box = element(driver, elem_id).find_element(By.CSS_SELECTOR, f'input[type=radio][value="{value}"]')
    _scroll_to(driver, box)
    box.find_element(By.XPATH, "..").click()  # the label: the input itself may be visually hidden
    _wait(driver, timeout).until(lambda _: radio_value(driver, elem_id) == value, f"#{elem_id}: {option!r} not picked")
    return value


def _examples_block(driver, label: str, timeout: float = 30):
    from selenium.webdriver.common.by import By

    def block(d):
        for head in d.find_elements(By.CSS_SELECTOR, ".block > .label"):
            if head.text.strip() == label:
                return head.find_element(By.XPATH, "..")
        return False

    return _wait(driver, timeout).until(block, f"no gr.Examples labelled {label!r}")


def examples(driver, label: str = "Examples") -> list[str]:
    """The visible text of each example of the ``gr.Examples`` block labelled ``label``, in page order."""
    from selenium.webdriver.common.by import By

    return [btn.text.strip() for btn in
            _examples_block(driver, label).find_elements(By.CSS_SELECTOR, "button.gallery-item")]


def shows_example(shown: str, full: str) -> bool:
    """Whether an example button's text ``shown`` is ``full``, or ``full`` cut with "..." (long examples are)."""
    return shown == full or (shown.endswith("...") and full.startswith(shown[:-3].rstrip()))


def pick_example(driver, index: int, label: str = "Examples", timeout: float = 60) -> str:
    """Click example number ``index`` of the examples block labelled ``label``; return its visible text. While an
    event that refills the examples is pending, gradio lays its status overlay over them: the click waits for it
    to go, as a person would (on a busy machine the page's first load can take a while)."""
    import time

    from selenium.common.exceptions import ElementClickInterceptedException
    from selenium.webdriver.common.by import By

    buttons = _examples_block(driver, label).find_elements(By.CSS_SELECTOR, "button.gallery-item")
    assert 0 <= index < len(buttons), f"{label!r} has {len(buttons)} examples, not #{index}"
    _scroll_to(driver, buttons[index])
    deadline = time.monotonic() + timeout
    while True:
        try:
            buttons[index].click()
            break
        except ElementClickInterceptedException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    return buttons[index].text.strip()


def label_bars(driver, elem_id: str) -> list[tuple[str, float]]:
    """(class, share 0..1) of every bar of the ``gr.Label`` with this ``elem_id``, top first."""
    from selenium.webdriver.common.by import By

    return [(m.get_attribute("aria-label"), float(m.get_attribute("value")))
            for m in element(driver, elem_id).find_elements(By.CSS_SELECTOR, "button.confidence-set meter")]


def bar_chart(driver, elem_id: str) -> dict | None:
    """What the ``gr.BarPlot`` with this ``elem_id`` draws: ``title``, ``x`` (the x-axis labels, left to right on
    screen), ``bars`` (how many bar shapes), ``legend`` (its entries' labels, none without a colour column) and
    ``clipped`` (the labels and legend entries drawn outside the component's box, so cut off on screen); None while
    it draws no chart."""
    from selenium.webdriver.common.by import By

    block = element(driver, elem_id)
    if not block.find_elements(By.CSS_SELECTOR, "svg.marks"):
        return None
    x_labels = block.find_elements(By.CSS_SELECTOR, 'g.role-axis[aria-label^="X-axis"] g.role-axis-label text')
    legend = block.find_elements(By.CSS_SELECTOR, "g.role-legend-label text")
    box = block.rect
    return {
        "title": " ".join(t.text.strip() for t in block.find_elements(By.CSS_SELECTOR, "g.role-title-text text")),
        "x": [t.text.strip() for t in sorted(x_labels, key=lambda t: t.rect["x"])],
        "bars": len(block.find_elements(By.CSS_SELECTOR, "g.role-mark path")),
        "legend": [t.text.strip() for t in legend],
        "clipped": [t.text.strip() for t in [*x_labels, *legend]
                    if t.rect["y"] + t.rect["height"] > box["y"] + box["height"] or t.rect["y"] < box["y"]],
    }


def wait_chart(driver, elem_id: str, timeout: float = 30) -> dict:
    """``bar_chart`` once the ``gr.BarPlot`` has drawn its title and x-axis labels (vega draws after the value
    arrives)."""
    from selenium.common.exceptions import StaleElementReferenceException

    def drawn(_):
        try:
            chart = bar_chart(driver, elem_id)
        except StaleElementReferenceException:  # redrawn while being read: read again
            return False
        return chart if chart and chart["title"] and chart["x"] else False

    return _wait(driver, timeout).until(drawn, f"#{elem_id} draws no chart within {timeout}s")


def toast_text(driver, timeout: float = 10, kind: str = "error") -> str:
    """The message(s) of the visible ``kind`` toast (``gr.Error`` -> "error", ``gr.Warning`` -> "warning",
    ``gr.Info`` -> "info"), newline-joined; waits up to ``timeout`` s for one; "" when none appeared."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By

    selector = f"{TOAST}.{kind} {TOAST_TEXT}" if kind else f"{TOAST} {TOAST_TEXT}"

    def messages(_):
        found = [el.text.strip() for el in driver.find_elements(By.CSS_SELECTOR, selector)]
        return "\n".join(m for m in found if m) or False

    try:
        return _wait(driver, timeout).until(messages)
    except TimeoutException:
        return ""


def screenshot(driver, path: str | Path) -> Path:
    """Save a PNG of the whole page (beyond the window, via the DevTools protocol), or of the window as a fallback."""
    import base64

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        width = max(int(size["width"]), 1)
        height = min(max(int(size["height"]), 1), 16000)
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        })
        path.write_bytes(base64.b64decode(shot["data"]))
    except Exception:  # noqa: BLE001 - not Chromium / old protocol: the visible window is still useful
        driver.save_screenshot(str(path))
    return path

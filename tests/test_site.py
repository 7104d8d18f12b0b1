"""The leaderboard site: pages from records, checked as files and in a real browser (headless
Chromium through Selenium; CI installs the Debian packages ``chromium`` and ``chromium-driver``).
Screenshots of the index and of a model page are left in the test's tmp dir."""

from __future__ import annotations

import json
import os
import re
import shutil
import time

import pytest

from harness.cli import main
from harness.plugins import load_plugins
from harness.run import RunConfig, run

pytest.importorskip("plotly")
pytest.importorskip("itables")


@pytest.fixture(scope="module")
def tiny_model_dir_module(tmp_path_factory, tiny_tokenizer_dir):
    from conftest import tiny_model
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("model") / "tiny-llama"
    tiny_model("smollm2").save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_tokenizer_dir).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_model_dir_module, data_dir):
    """Records of dense and five methods at two ratios on a tiny model (ShortGPT's allocation
    differs by block, the others' is uniform; it refuses 0.25 of two blocks), and the site made from them."""
    root = tmp_path_factory.mktemp("site")
    config = RunConfig(model=str(tiny_model_dir_module), methods=["dense", "magnitude", "wanda", "shortgpt", "slicegpt", "rtn"],
                       ratios=[0.25, 0.5], calibration="wikitext2:4x32", eval_windows=2, eval_length=32,
                       data_dir=str(data_dir), out=root / "records", cache_dir=root / "cache")
    records = [r for r in run(config, load_plugins(), log=lambda *a: None) if r.ok]
    assert main(["leaderboard", str(root / "records"), "--site", str(root / "out")]) == 0
    return root, records


def test_pages_name_no_machine_path_and_plot_every_row(site):
    root, records = site
    index = (root / "out" / "index.html").read_text()
    (page,) = [p for p in (root / "out").glob("*.html") if p.name != "index.html"]
    text = page.read_text()
    assert page.name in index and (root / "out" / "assets" / "plotly.min.js").is_file()
    for text_of in (index, text):
        assert str(root) not in text_of and "/tmp/" not in text_of  # data by name and hash, the model by identity
    rows = re.findall(r'<tr data-record="(\w+)"', text)
    assert sorted(rows) == sorted(r.key for r in records)  # every record a row, once
    figures = [json.loads(f.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))
               for f in re.findall(r'data-figure="([^"]*)"', text)]
    ratio_plot = next(f for f in figures if f["layout"]["xaxis"]["title"]["text"] == "ratio")
    assert len(ratio_plot["data"][0]["x"]) == len(records)
    assert all(f'id="record-{r.key}"' in text for r in records)  # per-record details
    assert "harness run --model" in text
    wanda = next(r for r in records if r.method == "wanda")
    assert "Allocation: uniform" in text.split(f'id="record-{wanda.key}"')[1].split("</details>")[0]


def test_the_reproducing_command_plans_the_same_cell(site):
    """A record's ``harness run`` line, as the page prints it, parses and plans: its method, target
    and evaluations (a zero-shot record's tasks included) are ones the harness accepts."""
    import dataclasses
    import shlex

    from harness.cli import build_parser, configs_from_args
    from harness.plugins import default_registry
    from harness.report.site import _command
    from harness.run.plan import plan_evaluations, plan_runs

    _, records = site
    wanda = next(r for r in records if r.method == "wanda")
    zeroshot = dataclasses.replace(wanda, eval={**wanda.eval, "zeroshot": {"tasks": ["piqa", "arc_easy"], "limit": None}})
    for record in (wanda, zeroshot):
        line = _command(record)
        (config,) = configs_from_args(build_parser().parse_args(shlex.split(line)[1:]))
        (plan,) = plan_runs(config, default_registry())
        assert plan.method.name == "wanda" and config.ratios == [record.target["ratio"]]
        evals = {e.name: args for e, args in plan_evaluations(config, default_registry())}
        assert evals.get("zeroshot", []) == (["piqa", "arc_easy"] if record is zeroshot else [])


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        missing = "headless Chromium not installed (apt-get install chromium chromium-driver; .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(missing)  # CI installs it: a missing browser there is a broken CI, not a skip
        pytest.skip(missing)
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.binary_location = chromium
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(driver), options=options)
    browser.set_window_size(1400, 1000)
    return browser


def _open(browser, path) -> float:
    start = time.perf_counter()
    browser.get(path.as_uri())
    for _ in range(300):
        if browser.execute_script("return document.body && document.body.dataset.ready === '1'"):
            return time.perf_counter() - start
        time.sleep(0.05)
    raise AssertionError(f"{path.name} never finished initialising: {browser.get_log('browser')}")


def _wait(browser, condition, seconds: float = 10) -> None:
    for _ in range(int(seconds / 0.05)):
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out; console: {browser.get_log('browser')}")


def _reference_on_top(browser) -> bool:
    """The dense row is drawn above every other row of the first table."""
    return browser.execute_script("""
        const table = document.querySelector('table.board');
        const dense = table.tFoot.rows[0], first = table.tBodies[0].rows[0];
        return dense.dataset.kind === 'reference' && dense.offsetParent !== null
               && dense.getBoundingClientRect().top < first.getBoundingClientRect().top;""")


def _rows(browser) -> list[tuple[str, str]]:
    """(method, kind) of the first table's visible body rows, top to bottom."""
    return browser.execute_script("""
        const table = document.querySelector('table.board');
        return [...table.tBodies[0].rows].filter(r => r.offsetParent !== null).map(r => [r.cells[1].innerText, r.dataset.kind]);
    """)


def test_the_site_in_a_real_browser(site, tmp_path):
    pytest.importorskip("selenium")
    root, records = site
    (page,) = [p for p in (root / "out").glob("*.html") if p.name != "index.html"]
    browser = _browser()
    try:
        _open(browser, root / "out" / "index.html")
        browser.save_screenshot(str(tmp_path / "index.png"))
        assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        seconds = _open(browser, page)
        _wait(browser, lambda: browser.execute_script(  # DataTables has taken every table over
            "return [...document.querySelectorAll('table.board')].every(t => t.classList.contains('dataTable'))"))
        browser.save_screenshot(str(tmp_path / "model.png"))
        assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"], "console errors"
        assert seconds < 10  # generous for a loaded CI machine; the closing note says what it takes idle
        before = _rows(browser)
        assert len(before) == len(records) - 1 and _reference_on_top(browser)
        # sort by perplexity, then the other way: the order changes, the reference row stays on top
        header = browser.execute_script("""
            return [...document.querySelectorAll('table.board thead th')].find(th => th.innerText.trim() === 'ppl:wikitext2');""")
        header.click()
        _wait(browser, lambda: header.get_attribute("aria-sort") == "ascending")
        ascending = _rows(browser)
        header.click()
        _wait(browser, lambda: header.get_attribute("aria-sort") == "descending")
        descending = _rows(browser)
        assert ascending != descending and _reference_on_top(browser)
        # the kind filter shows exactly the rows of that kind
        browser.execute_script("""
            [...document.querySelector('table.board').tHead.rows[0].cells].find(th => th.innerText.trim() === 'kind')
                .querySelector('.dtcc-button_dropdown').click();""")
        option = browser.execute_script("""
            return [...document.querySelectorAll('.dtcc-dropdown .dtcc-list-buttons button')]
                .find(b => b.innerText.trim() === 'unstructured');""")
        option.click()
        _wait(browser, lambda: {kind for _, kind in _rows(browser)} == {"unstructured"})
        filtered = _rows(browser)
        assert filtered and {kind for _, kind in filtered} == {"unstructured"}
        assert len(filtered) == sum(r.method_kind == "unstructured" for r in records) and _reference_on_top(browser)
        # figures are drawn as they come into view: each plot has one point per row
        browser.execute_script("document.querySelector('div.plots').scrollIntoView()")
        _wait(browser, lambda: browser.execute_script(
            "return [...document.querySelectorAll('div.plots')[0].children].every(p => p.classList.contains('drawn'))"))
        points = browser.execute_script(
            "return [...document.querySelectorAll('div.plots')[0].children].map(p => p.data[0].x.length);")
        assert points and max(points) == len(records)
        # a record's per-layer allocation is drawn when it is opened: one bar per layer, as its report says
        allocated = next(r for r in records if r.method == "shortgpt")
        browser.execute_script(f"const d = document.getElementById('record-{allocated.key}'); d.open = true; d.scrollIntoView();")
        _wait(browser, lambda: browser.execute_script(
            f"return document.querySelector('#record-{allocated.key} div.allocation.drawn')"))
        bars = browser.execute_script(
            f"return document.querySelector('#record-{allocated.key} div.allocation').data.map(t => t.y);")
        assert sorted(v for trace in bars for v in trace) == sorted(round(v, 4) for v in allocated.report["layer_ratios"].values())
        browser.save_screenshot(str(tmp_path / "allocation.png"))
        assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"], "console errors"
    finally:
        browser.quit()

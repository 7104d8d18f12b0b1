"""How long a leaderboard page takes to open in headless Chromium, and what it weighs.

Builds the site (``harness leaderboard --site``) from a folder of records, optionally padded to
``--rows`` rows in its largest table (copies of its records at other targets, their metrics
jittered: the page's size is what is measured, not the figures), then opens each model page
``--repeat`` times in a fresh headless Chromium (Selenium; ``apt-get install chromium
chromium-driver``) and prints, per page:

- bytes: the page, and the shared ``assets/`` it loads;
- load: the browser's load event (navigation start to ``loadEventEnd``);
- ready: navigation start to the moment the page's script marks it usable (tables sortable and
  filterable, ``document.body.dataset.ready``);
- plots: navigation start to the first trade-off plot drawn, once it has been scrolled into view.

    python benchmarks/site_load.py leaderboards/smollm2-135m-instruct/records --rows 100
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from harness.report.leaderboard import table_groups
from harness.report.site import write_site
from harness.results import load_records, write_record


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("records", type=Path, nargs="+", help="folders of run records (as `harness leaderboard`)")
    parser.add_argument("--rows", type=int, default=0, help="pad the largest table to this many rows (0: as is)")
    parser.add_argument("--repeat", type=int, default=3, help="fresh browser loads per page (the median is printed)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def padded_records(folders: list[Path], rows: int, seed: int, out: Path) -> Path:
    """The records of ``folders`` copied to ``out``, with the largest table padded to ``rows`` rows."""
    records = [r for folder in folders for r in load_records(folder)]
    for record in records:
        write_record(out / f"{record.key}.json", record)
    largest = max(table_groups(records), key=lambda g: len(g.group.records))
    pool = [r for r in largest.group.records if r.ok and r.method_kind != "reference" and r.mode == "matched-ratio"]
    rng = random.Random(seed)
    for i in range(max(0, rows - len(largest.group.records))):
        source = pool[i % len(pool)]
        ratio = round(rng.uniform(0.05, 0.7), 4)
        key = hashlib.sha256(f"{source.key}-{i}".encode()).hexdigest()[:16]
        metrics = {k: v * rng.uniform(0.9, 1.1) for k, v in source.metrics.items()}
        clone = replace(source, key=key, label=f"{ratio:g}", target={**source.target, "ratio": ratio},
                        metrics=metrics, path=None)
        write_record(out / f"{key}.json", clone)
    return out


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        raise SystemExit("needs headless Chromium: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.binary_location = chromium
    session = webdriver.Chrome(service=Service(driver), options=options)
    session.set_window_size(1400, 1000)
    return session


def wait_for(session, script: str, seconds: float = 30) -> None:
    deadline = time.perf_counter() + seconds
    while not session.execute_script(script):
        if time.perf_counter() > deadline:
            raise TimeoutError(script)
        time.sleep(0.01)


def measure(page: Path) -> dict[str, float]:
    """One fresh browser, one load of ``page``: milliseconds from navigation start."""
    session = browser()
    try:
        session.get(page.as_uri())
        wait_for(session, "return document.body && document.body.dataset.ready === '1'")
        wait_for(session, "return performance.timing.loadEventEnd > 0")
        timing = session.execute_script("""
            const t = performance.timing, ready = Number(document.body.dataset.readyAt || NaN);
            return {load: t.loadEventEnd - t.navigationStart, ready: ready};""")
        session.execute_script("document.querySelector('div.plot')?.scrollIntoView()")
        wait_for(session, "return !document.querySelector('div.plot') || document.querySelector('div.plot.drawn')")
        timing["plots"] = session.execute_script(
            "const p = document.querySelector('div.plot.drawn'); return p ? Number(p.dataset.drawnAt) : NaN;")
        return timing
    finally:
        session.quit()


def main() -> None:
    cli = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folders = [padded_records(cli.records, cli.rows, cli.seed, tmp / "records")] if cli.rows else cli.records
        pages = [p for p in write_site(folders, tmp / "site") if p.name != "index.html"]
        assets = sum(f.stat().st_size for f in (tmp / "site" / "assets").iterdir())
        print(f"assets/: {assets / 1024:.0f} KB (loaded once, cached across pages)")
        for page in pages:
            rows = page.read_text().count("<tr data-record=")
            runs = [measure(page) for _ in range(cli.repeat)]
            median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            print(f"{page.name}: {rows} rows, {page.stat().st_size / 1024:.0f} KB; median of {cli.repeat} fresh loads: "
                  f"load {median['load']:.0f} ms, ready {median['ready']:.0f} ms, first plot {median['plots']:.0f} ms")


if __name__ == "__main__":
    main()

"""The report in a real browser: headless Chromium renders it from disk.

The DOM after the page's scripts ran (``--dump-dom``) must hold every section, table and chart,
and every image must have decoded (the report's inline script marks each ``<img>`` with
``data-decoded="1"`` when its ``naturalWidth`` is positive); a screenshot must not be blank. The
checker is shown to fail on a report with a broken image and a missing section, and on a blank
page.

Needs Chromium (``apt-get install -y chromium``; or set ``SK_A2_CHROMIUM`` to a Chrome or
Chromium binary). Without it these tests are skipped, except under ``CI=true``, where they fail.
"""

import base64
import io
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from sk_a2 import CropSet
from sk_a2.report import write_report

INSTALL = "apt-get install -y chromium"
SECTIONS = ["run", "headline", "groups", "confusion", "failures", "tuning", "compare",
            "localization"]
TABLES = ["run", "headline", "groups", "classes", "confusion", "tuning", "compare",
          "localization"]
CHARTS = ["group-accuracy", "histogram"]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def find_chromium():
    for name in (os.environ.get("SK_A2_CHROMIUM"), "chromium", "chromium-browser",
                 "google-chrome", "google-chrome-stable"):
        path = name and shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def chromium():
    path = find_chromium()
    if path is None:
        message = (f"Chromium renders the report in these tests: install it ({INSTALL}) or set "
                   "SK_A2_CHROMIUM to a Chrome or Chromium binary")
        if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
            pytest.fail(f"CI=true and no Chromium: {message}")
        pytest.skip(message)
    return path


def render(binary, page, workdir, *options):
    """Run headless Chromium on ``page``; its stdout."""
    profile = workdir / "profile"
    profile.mkdir(exist_ok=True)
    command = [binary, *FLAGS, f"--user-data-dir={profile}", *options, page.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def dump_dom(binary, page, workdir):
    return render(binary, page, workdir, "--virtual-time-budget=5000", "--dump-dom")


def screenshot(binary, page, workdir):
    png = workdir / f"{page.stem}.png"
    render(binary, page, workdir, "--window-size=1200,1600", "--hide-scrollbars",
           "--virtual-time-budget=5000", f"--screenshot={png}")
    return png


class RenderedDOM(HTMLParser):
    """What a rendered report holds: sections, tables, charts, images and the body's marks."""

    def __init__(self, text):
        super().__init__()
        self.body, self.sections, self.tables, self.charts, self.images = {}, [], [], [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body = a
        elif tag == "section":
            self.sections.append(a.get("id"))
        elif tag == "table":
            self.tables.append(a.get("data-table"))
        elif tag == "svg" and a.get("data-chart"):
            self.charts.append(a["data-chart"])
        elif tag == "img":
            self.images.append(a)


def dom_problems(dom, sections, tables, charts, min_images):
    """What is missing or broken in a rendered report (empty when nothing is)."""
    page = RenderedDOM(dom)
    problems = []
    if "data-images-checked" not in page.body:
        problems.append("the report's script did not run: no data-images-checked on <body>")
    problems += [f"section {s!r} missing" for s in sections if s not in page.sections]
    problems += [f"table {t!r} missing" for t in tables if t not in page.tables]
    problems += [f"chart {c!r} missing" for c in charts if c not in page.charts]
    if len(page.images) < min_images:
        problems.append(f"{len(page.images)} images, expected at least {min_images}")
    problems += [f"image {i} ({img.get('alt')}) did not decode"
                 for i, img in enumerate(page.images) if img.get("data-decoded") != "1"]
    return problems


def screenshot_problems(png):
    pixels = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
    return [] if pixels.std() > 5 else [f"the screenshot is blank (pixel std {pixels.std():.2f})"]


def full_report(path):
    """A report with every section: images, boxes and maps, tuning, compare, localization."""
    rng = np.random.default_rng(0)
    n = 80
    y = rng.integers(0, 2, n)
    groups = 2 * y + rng.integers(0, 2, n)
    p1 = np.clip(np.where(y == 1, 0.7, 0.3) + rng.normal(0, 0.25, n), 0.01, 0.99)
    yy, xx = np.mgrid[:48, :64]
    images = np.stack([np.stack([xx * 4, yy * 5, np.full_like(xx, 40 * (i % 5))], -1)
                       for i in range(n)]).astype(np.uint8)
    boxes = np.tile(np.array([[4, 4, 28, 28], [30, 20, 46, 36]], np.float32), (n, 1, 1))
    loc = {"model": np.array(["vit"] * 40, dtype=object), "layer": np.repeat([10, 11], 20),
           "head_aggregation": np.array(["mean"] * 40), "mass_in_box": rng.random(40),
           "hit": rng.integers(0, 2, 40)}
    return write_report(
        path, metadata={"dataset": "synthetic", "seeds": [0, 1]}, y_true=y,
        y_pred=(p1 > 0.5).astype(int), groups=groups, proba=np.column_stack([1 - p1, p1]),
        target_names=["disk", "square"], split_groups={"train": rng.integers(0, 4, 300)},
        split_labels={"train": rng.integers(0, 2, 300)},
        crops=CropSet(images, boxes, np.zeros((n, 2)), [[48, 64]] * n),
        attention_maps=rng.random((n, 4, 4)), image_size=32,
        per_seed=[{"accuracy": 0.8}, {"accuracy": 0.85}], reported={"accuracy": 88.0},
        tuning={"best_params": {"lr__C": 1.0}, "best_score": 0.7,
                "validation_table": [{"params": {"lr__C": c}, "score": 0.6, "rank": 1}
                                     for c in (0.1, 1.0)]},
        compare=[{"label": "A²", "accuracy": 0.9, "worst_group_accuracy": 0.7}],
        localization=loc)


def test_report_renders_in_chromium(chromium, tmp_path):
    page = full_report(tmp_path / "report.html")
    dom = dump_dom(chromium, page, tmp_path)
    n_images = page.read_text().count("<img ")
    assert n_images > 20
    assert dom_problems(dom, SECTIONS, TABLES, CHARTS, n_images) == []
    assert screenshot_problems(screenshot(chromium, page, tmp_path)) == []


def test_the_check_fails_on_a_broken_image_a_missing_section_and_a_blank_page(chromium,
                                                                             tmp_path):
    text = full_report(tmp_path / "report.html").read_text()
    n_images = text.count("<img ")
    first = re.search(r'data-index="(\d+)"', text).group(1)  # the first image's test index
    garbage = base64.b64encode(b"\xff\xd8 not a JPEG " * 20).decode()
    text = re.sub(r"data:image/jpeg;base64,[^\"]+", f"data:image/jpeg;base64,{garbage}", text,
                  count=1)
    text = re.sub(r'<section id="confusion".*?</section>', "", text, flags=re.S)
    damaged = tmp_path / "damaged.html"
    damaged.write_text(text, encoding="utf-8")
    problems = dom_problems(dump_dom(chromium, damaged, tmp_path), SECTIONS, TABLES, CHARTS,
                            n_images)
    assert problems == ["section 'confusion' missing", "table 'confusion' missing",
                        f"image 0 (test image {first} with its attention and boxes) did not "
                        "decode"]

    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>", encoding="utf-8")
    assert screenshot_problems(screenshot(chromium, blank, tmp_path))[0].startswith(
        "the screenshot is blank")


def test_image_check_uses_decoded_pixels():
    # the marks the checker reads come from the page's own script; without them it complains
    dom = '<html><body><section id="run"><table data-table="run"></table></section>' \
          '<img alt="x" src="data:,"></body></html>'
    assert dom_problems(dom, ["run"], ["run"], [], 1) == [
        "the report's script did not run: no data-images-checked on <body>",
        "image 0 (x) did not decode"]
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, "PNG")
    assert screenshot_problems(buffer) != []

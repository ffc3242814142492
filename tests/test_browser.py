"""The real app in a real browser: Playwright driving Debian's Chromium (installed by .ci/run; never
`playwright install`). Types a query, draws a sketch with mouse strokes, votes, clicks a result, triggers an
error, and checks the page and the SQLite vote store. Screenshots: test-artifacts/browser/NN-step.png."""
from __future__ import annotations

import math
import re
import time
from pathlib import Path

import pytest
from conftest import App
from playwright.sync_api import sync_playwright  # requirements-dev.txt; drives /usr/bin/chromium only

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "browser"
TIMEOUT_MS = 120_000  # one answer on a busy 2-core CPU (the first sketch also loads the image tower)
K = 12  # DEFAULT_TOP_K


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium chromium-driver` (.ci/run does it)")
    (ARTIFACTS / "steps.txt").unlink(missing_ok=True)  # this run's step durations only
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            yield browser
        finally:
            browser.close()


class Visit:
    """One visitor's page, with the few locators the steps need."""

    def __init__(self, browser, url: str, viewport: tuple[int, int] = (1400, 900)) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
        self.page.set_default_timeout(TIMEOUT_MS)
        self.page_errors: list[str] = []
        self.page.on("pageerror", lambda e: self.page_errors.append(str(e)))
        self.page.goto(url, timeout=TIMEOUT_MS)
        self.search_button = self.page.get_by_role("button", name="Search", exact=True)
        self.search_button.wait_for()
        self.text = self.page.get_by_label("Text", exact=True)
        self.since = time.monotonic()

    def gallery(self, side: str):
        label = self.page.locator("label[data-testid=block-label]", has_text=re.compile(rf"^\s*{side}\s*$"))
        return self.page.locator(".block").filter(has=label)

    def images(self, side: str) -> int:
        return self.gallery(side).locator(".thumbnail-item img").count()

    def wait_for_results(self, info: str) -> None:
        """Both galleries hold K images and the line under them says `info` (so these are the new results)."""
        self.page.get_by_text(re.compile(info)).first.wait_for()
        self.page.wait_for_function(f"() => [...document.querySelectorAll('.thumbnail-item img')]"
                                    f".filter(i => i.complete && i.naturalWidth > 0).length >= {2 * K}")
        assert self.images("A") == self.images("B") == K

    def info(self) -> str:
        return self.page.locator("[data-testid=markdown]").filter(has_text=re.compile("results per side")).inner_text()

    def shot(self, name: str, full_page: bool = True) -> None:
        """A screenshot (the whole page, or what the window shows), and the step's duration in steps.txt."""
        seconds = time.monotonic() - self.since
        time.sleep(0.3)  # let transitions settle
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)
        with open(ARTIFACTS / "steps.txt", "a") as f:
            f.write(f"{name}.png  {seconds:.1f} s\n")
        self.since = time.monotonic()

    def draw(self, strokes: list[list[tuple[float, float]]]) -> None:
        """Strokes in canvas fractions (0..1), drawn with the mouse on the Sketchpad's canvas (the brush is
        selected when the page opens: no tool to pick first)."""
        canvas = self.page.locator(".pixi-target canvas").first
        box = canvas.bounding_box()
        assert box and box["width"] > 100 and box["height"] > 100, box
        mouse = self.page.mouse
        for stroke in strokes:
            points = [(box["x"] + x * box["width"], box["y"] + y * box["height"]) for x, y in stroke]
            mouse.move(*points[0])
            mouse.down()
            for point in points[1:]:  # one event per vertex: the canvas joins them with straight lines
                mouse.move(*point)  # (each event costs ~0.5 s of software rendering on a busy CPU)
            mouse.up()


def house() -> list[list[tuple[float, float]]]:
    """A line drawing: walls, a roof, a door and a sun (inside the white drawing area of the canvas)."""
    walls = [(0.25, 0.55), (0.7, 0.55), (0.7, 0.82), (0.25, 0.82), (0.25, 0.55)]
    roof = [(0.22, 0.57), (0.47, 0.32), (0.73, 0.57)]
    door = [(0.42, 0.82), (0.42, 0.68), (0.52, 0.68), (0.52, 0.82)]
    sun = [(0.75 + 0.06 * math.cos(t / 8 * 2 * math.pi), 0.25 + 0.06 * math.sin(t / 8 * 2 * math.pi))
           for t in range(9)]
    return [walls, roof, door, sun]


def test_search_sketch_vote_and_errors_in_a_real_browser(app: App, browser) -> None:
    visit = Visit(browser, app.url)
    page = visit.page
    assert visit.images("A") == visit.images("B") == 0
    visit.shot("01-loaded")

    # a text query fills both galleries
    visit.text.fill("a cat")
    visit.search_button.click()
    visit.wait_for_results("Query: text")
    assert "Rephrased:" in visit.info()
    visit.shot("02-text-results")

    # a drawn sketch: strokes on the canvas, then Search
    visit.text.fill("")
    visit.draw(house())
    visit.shot("03-sketch-drawn")
    visit.search_button.click()
    visit.wait_for_results(r"Query style: (sketch|doodle) \d")  # a few mouse strokes: either drawing style
    visit.shot("04-sketch-results")

    # consent, vote A; the reveal is on the page and the vote in the database
    before = app.votes()
    page.get_by_label("I agree that my votes are stored").check()
    page.get_by_role("button", name="A is better").click()
    reveal = page.get_by_text(re.compile(r"Thanks! [AB] was the baseline ranking"))
    reveal.wait_for()
    deadline = time.monotonic() + 10
    while len(app.votes()) == len(before) and time.monotonic() < deadline:
        time.sleep(0.2)
    new = [v for v in app.votes() if v.vote_id not in {b.vote_id for b in before}]
    assert len(new) == 1, new
    vote = new[0]
    assert vote.choice == "A" and vote.query_text is None and vote.query_image
    assert vote.style.split()[0] in ("sketch", "doodle")
    assert len(vote.side_a) == len(vote.side_b) == K
    baseline, aligned = re.search(r"Thanks! ([AB]) was the baseline ranking and ([AB]) the aesthetically-aligned",
                                  reveal.inner_text()).groups()
    assert baseline == vote.baseline_side and aligned != baseline
    assert page.get_by_role("button", name="B is better").is_disabled()  # one vote per query
    visit.shot("05-voted")

    # "more like this": clicking a result searches with that image, which comes back first on both sides
    first_b = visit.gallery("B").locator(".thumbnail-item").first
    clicked = first_b.locator("img").get_attribute("src").rsplit("/", 1)[-1]
    first_b.click()
    page.wait_for_function("() => !document.body.innerText.includes('Thanks!')")  # the new answer cleared it
    for side in "AB":
        page.wait_for_function(
            "([side, name]) => { const g = [...document.querySelectorAll('.block')].find(b => "
            "[...b.querySelectorAll('label[data-testid=block-label]')].some(l => l.innerText.trim() === side));"
            " const img = g && g.querySelector('.thumbnail-item img'); return img && img.src.endsWith(name); }",
            arg=[side, clicked])
    visit.shot("06-more-like-this")
    assert visit.page_errors == []


def test_a_bad_input_shows_an_error_and_the_next_query_works(app: App, browser) -> None:
    visit = Visit(browser, app.url)
    page = visit.page
    visit.search_button.click()  # nothing typed, nothing drawn
    toast = page.locator("[data-testid=toast-body]").filter(has_text=re.compile("canvas is blank|empty query"))
    toast.wait_for(state="visible")
    assert visit.images("A") == visit.images("B") == 0
    visit.shot("07-error")
    visit.text.fill("a cup of coffee")
    visit.search_button.click()
    visit.wait_for_results("Query: text")
    visit.shot("08-after-error")
    assert visit.page_errors == []


def test_the_first_screen_shows_the_examples_and_a_ready_canvas(app: App, browser) -> None:
    visit = Visit(browser, app.url)  # 1400 x 900
    page = visit.page
    examples = page.locator("button.gallery-item img, .gallery-item img").first  # example pictures
    examples.wait_for()
    for label in ("a cat", "a cup of coffee"):  # example texts
        box = page.get_by_text(label, exact=True).first.bounding_box()
        assert box and box["y"] + box["height"] <= 900, (label, box)
    box = examples.bounding_box()
    assert box and box["y"] + box["height"] <= 900, box  # visible without scrolling
    consent = page.locator("#consent p").first
    assert float(consent.evaluate("e => parseFloat(getComputedStyle(e).fontSize)")) >= 14  # legible
    visit.shot("09-first-screen", full_page=False)
    visit.draw(house())  # straight away: the brush is ready
    visit.search_button.click()
    visit.wait_for_results(r"Query style: (sketch|doodle) \d")
    assert visit.page_errors == []


def test_the_page_works_on_a_phone(app: App, browser) -> None:
    visit = Visit(browser, app.url, viewport=(390, 844))
    page = visit.page
    assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1  # no sideways scrolling
    visit.shot("10-phone-loaded")
    visit.text.fill("a cat")
    visit.search_button.click()
    page.get_by_text(re.compile("Query: text")).first.wait_for()
    for side in "AB":  # thumbnails load lazily: each gallery's once it is scrolled into view
        gallery = visit.gallery(side)
        gallery.scroll_into_view_if_needed()
        gallery.locator(".thumbnail-item img").first.wait_for()
        assert visit.images(side) == K
    visit.gallery("A").scroll_into_view_if_needed()
    visit.shot("11-phone-results")
    assert visit.page_errors == []


def test_the_results_tab_shows_what_the_votes_say(app: App, browser) -> None:
    from gradio_client import Client

    voter = Client(app.url, verbose=False, download_files=False)  # at least one vote to report
    voter.predict("a cat", None, None, k=3, api_name="/search")
    voter.predict("A", True, api_name="/vote")
    visit = Visit(browser, app.url)
    page = visit.page
    page.get_by_role("tab", name="Results").click()
    page.get_by_text(re.compile(r"\d+ vote\(s\) from")).wait_for()
    assert page.get_by_text("Sign test (two-sided exact binomial").first.is_visible()
    visit.shot("12-results")
    plots = visit.gallery("Plots").locator("img")
    plots.first.wait_for()
    assert plots.count() >= 4  # win rates, by kind, by version, over time (and the arena)
    assert visit.page_errors == []

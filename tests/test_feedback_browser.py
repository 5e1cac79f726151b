"""The labeling page in a real browser: Playwright driving Debian's Chromium against `rlhfkit label serve`.

A labeler signs in, ranks four outputs with a tie using only the keyboard, rates them, submits, and the
export holds exactly that ranking. Every output and the prompt are XSS payloads: none may run, open a
dialog or turn into markup. A screenshot of the filled-in page is kept in test-artifacts/.
"""

import shutil
from pathlib import Path

import pytest
from servers import label_server

from rlhfkit.feedback.export import export_rankings
from rlhfkit.feedback.store import Assignment, Store

pytestmark = pytest.mark.integration  # trains models, runs commands or drives a server: make test, not test-fast

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
# Each payload, if it ever ran, would set window.pwned or open a dialog.
XSS = [
    "<script>window.pwned = 1; alert(1)</script>",
    '<img src="x" onerror="window.pwned = 2; alert(2)">',
    '<a href="javascript:window.pwned=3">click me</a> [link](javascript:alert(3))',
    '</textarea></pre><script>window.pwned = 4</script><svg onload="alert(4)">',
]
PROMPT = '</script><script>window.pwned = 5</script> Rank these <b>outputs</b>'


@pytest.fixture
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (scripts/test_services.sh installs Debian's chromium as root)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        yield b
        b.close()


def test_rank_with_ties_by_keyboard_submit_and_export(browser, tmp_path):
    url = f"sqlite:///{tmp_path / 'feedback.db'}"
    store = Store(url)
    store.add_project("p", overlap=1)
    store.import_tasks("p", [{"prompt": PROMPT, "responses": XSS}])
    _, token = store.add_labeler("ann")

    with label_server(url, tmp_path / "server.log") as base:
        page = browser.new_page()
        dialogs, console_errors = [], []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)

        page.goto(base + "/login")
        page.fill("input[name=token]", token)
        page.click("button[type=submit]")
        page.wait_for_url(base + "/")
        page.goto(base + "/projects/p/next")
        page.wait_for_selector(".output")

        # Untrusted text shows as text: the payloads appear verbatim, and none became an element.
        cards = page.locator(".output pre")
        shown = [cards.nth(i).inner_text() for i in range(4)]
        assert sorted(shown) == sorted(XSS)
        assert PROMPT in page.locator(".prompt").inner_text()
        assert page.locator("#task img, #task a, #task svg, #task script, #task b").count() == 0
        assert page.evaluate("window.pwned") is None

        # Ranked from the keyboard: focus each output card and press its rank (1 = best). Outputs 1 and 2 tie.
        wanted = [1, 1, 2, 3]  # shown order
        for i, rank in enumerate(wanted):
            card = page.locator(f'.output[data-index="{i}"]')
            card.focus()
            page.keyboard.press(str(rank))
            card.locator("select.likert").select_option(str(8 - rank * 2))
        page.locator("#comment").fill("first two are equally good </textarea><script>window.pwned=6</script>")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "labeling-ranking.png"), full_page=True)
        page.click("#submit")
        page.wait_for_url("**/projects/p/next")
        assert "Nothing left" in page.content()
        assert page.evaluate("window.pwned") is None and dialogs == []
        assert console_errors == []  # not even a script refused by the Content-Security-Policy

    (ranking,) = export_rankings(store, "p")
    with store.session() as s:
        order = s.query(Assignment).one().order  # shown position i displayed task response order[i]
    expected = [None] * 4
    for shown_pos, task_index in enumerate(order):
        expected[task_index] = wanted[shown_pos] - 1
    assert ranking.ranks == expected and ranking.labeler == "ann"
    assert ranking.likert == [8 - (r + 1) * 2 for r in expected]
    assert ranking.meta["comment"].startswith("first two are equally good </textarea><script>")  # kept as text

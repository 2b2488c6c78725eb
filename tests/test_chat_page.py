"""The chat page in a real browser: Debian's chromium driven by Playwright, against the service on loopback.

A reader signs in with a token, asks, watches the answer arrive piece by piece, opens a cited
passage, asks a follow-up, and sees plain messages when there is nothing they may read or when
the model is down. Every request the browser makes is recorded: none leaves loopback. No browser
is downloaded (`.ci/run` installs the chromium package when it is missing).

Run on its own: ``pytest tests/test_chat_page.py``; the screenshot lands in docs/chat-page.png.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from llm_server import free_loopback_port, serving, smollm2_generator  # noqa: F401  # session fixture
from sqlalchemy import select
from test_query_service import ingested  # noqa: F401  # module fixture: the sample corpus, ingested

from rag.catalog.models import Document
from rag.catalog.store import CatalogStore
from rag.config import Settings
from rag.llm.llamacpp import LlamaCppGenerator
from rag.llm.openai_compat import OpenAICompatibleGenerator
from rag.query import QueryEngine
from rag.service.app import create_app
from rag.service.auth import issue_token

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev extra)")
CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed (.ci/run installs it)", allow_module_level=True)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.fixture(scope="module")
def private_settings(ingested: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:  # noqa: F811
    """A copy of the ingested home in which no document is public: a reader without groups sees nothing."""
    home = tmp_path_factory.mktemp("page") / "home"
    shutil.copytree(ingested.home, home)
    settings = ingested.model_copy(update={"home": home, "database_url": f"sqlite:///{home / 'catalog.db'}",
                                           "audit_database_url": f"sqlite:///{home / 'audit.db'}"})
    catalog = CatalogStore(settings.database_url)
    with catalog.session() as session:
        public = [d.id for d in session.scalars(select(Document)) if d.access == {"public": True}]
    for doc_id in public:
        catalog.update_access(doc_id, {"groups": ["staff"]})
    catalog.dispose()
    return settings


@pytest.fixture(scope="module")
def site(private_settings: Settings, smollm2_generator: LlamaCppGenerator) -> Iterator[str]:  # noqa: F811
    engine = QueryEngine(private_settings, generator=smollm2_generator)
    engine.warm_up()
    with serving(create_app(private_settings, engine_factory=lambda s: engine)) as url:
        yield url
    engine.close()


@pytest.fixture(scope="module")
def site_with_model_down(private_settings: Settings) -> Iterator[str]:
    down = OpenAICompatibleGenerator(f"http://127.0.0.1:{free_loopback_port()}/v1", "none", timeout_s=5,
                                     connect_attempts=1)
    engine = QueryEngine(private_settings, generator=down)
    engine.warm_up()
    with serving(create_app(private_settings, engine_factory=lambda s: engine)) as url:
        yield url
    engine.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[sync_api.Browser]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield chromium
        chromium.close()


class Reader:
    """One browser tab, recording every URL it requests."""

    def __init__(self, browser: sync_api.Browser) -> None:
        self.context = browser.new_context(viewport={"width": 1440, "height": 900})
        self.page = self.context.new_page()
        self.requests: list[str] = []
        self.page.on("request", lambda request: self.requests.append(request.url))

    def sign_in(self, url: str, settings: Settings, user: str, groups: list[str]) -> None:
        self.page.goto(url + "/")
        self.page.get_by_test_id("sign-in").wait_for()
        self.page.get_by_test_id("token").fill(issue_token(settings, user, groups))
        self.page.get_by_test_id("sign-in-submit").click()
        self.page.get_by_test_id("identity").wait_for()

    def ask(self, question: str) -> sync_api.Locator:
        """Ask, and return the new answer once it is complete."""
        turns = self.page.get_by_test_id("assistant-turn")
        before = turns.count()
        self.page.get_by_test_id("question").fill(question)
        self.page.get_by_test_id("ask").click()
        answer = turns.nth(before)
        answer.and_(self.page.locator("[data-done=true]")).wait_for(timeout=120_000)
        return answer

    def hosts(self) -> set[str]:
        return {urlsplit(u).hostname or "" for u in self.requests}

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def reader(browser: sync_api.Browser) -> Iterator[Reader]:
    tab = Reader(browser)
    yield tab
    assert tab.requests and tab.hosts() == {"127.0.0.1"}, f"a request left loopback: {sorted(tab.hosts())}"
    tab.close()


def test_without_a_token_the_page_asks_to_sign_in_and_shows_no_data(site: str, reader: Reader) -> None:
    reader.page.goto(site + "/")
    reader.page.get_by_test_id("sign-in").wait_for()
    assert not reader.page.get_by_test_id("conversation").is_visible()
    reader.page.get_by_test_id("token").fill("not-a-token")
    reader.page.get_by_test_id("sign-in-submit").click()
    reader.page.get_by_text("That token was not accepted.").wait_for()


def test_a_reader_signs_in_asks_sees_tokens_arrive_opens_a_citation_and_follows_up(
        site: str, reader: Reader, private_settings: Settings) -> None:
    page = reader.page
    reader.sign_in(site, private_settings, "onc1", ["oncology"])
    assert "onc1" in page.get_by_test_id("identity").inner_text()

    page.get_by_test_id("question").fill("How is the oxaliplatin dose adjusted for neuropathy?")
    page.get_by_test_id("ask").click()
    # the first piece of the answer is on screen while the answer is still being generated
    state = page.wait_for_function(
        """() => { const t = document.querySelector('[data-testid=assistant-turn]');
                   const n = t && Number(t.getAttribute('data-streamed-pieces') || 0);
                   return n > 0 ? {pieces: n, done: t.getAttribute('data-done'),
                                   text: t.querySelector('[data-testid=answer-text]').textContent} : null; }""",
        timeout=120_000).json_value()
    assert state["done"] is None and state["text"]
    first = page.get_by_test_id("assistant-turn").first
    first.and_(page.locator("[data-done=true]")).wait_for(timeout=120_000)
    assert int(first.get_attribute("data-streamed-pieces") or 0) > state["pieces"]  # more pieces came after
    assert first.get_by_test_id("audit-id").inner_text().startswith("Audit record ")

    answer = first
    for attempt in range(3):  # the tiny model does not cite every time
        if answer.get_by_test_id("citation").count():
            break
        answer = reader.ask(["Which antiemetics are given before FOLFOX?",
                             "When is fluorouracil bolus omitted?", "What is the FOLFOX protocol?"][attempt])
    else:
        pytest.fail("no answer in four cited a passage")
    answer.get_by_test_id("citation").first.click()
    panel = page.get_by_test_id("passage")
    panel.wait_for()
    assert page.get_by_test_id("passage-source").inner_text() == "oncology/chemo-protocol.md"
    assert page.get_by_test_id("passage-access").inner_text() == "group oncology"
    assert page.get_by_test_id("passage-excerpt").inner_text().strip()
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / "chat-page.png"), full_page=True)

    # a follow-up goes out with the conversation, and is answered in the same thread
    with page.expect_request(lambda r: r.url.endswith("/v1/chat/completions")) as sent:
        follow_up = reader.ask("And for grade 3?")
    messages = sent.value.post_data_json["messages"]
    assert len(messages) >= 3 and messages[-1] == {"role": "user", "content": "And for grade 3?"}
    assert follow_up.get_by_test_id("audit-id").is_visible()
    assert page.get_by_test_id("user-turn").count() == page.get_by_test_id("assistant-turn").count()


def test_a_reader_without_access_is_told_there_is_no_answer_in_their_documents(
        site: str, reader: Reader, private_settings: Settings) -> None:
    reader.sign_in(site, private_settings, "visitor", [])
    answer = reader.ask("How is the oxaliplatin dose adjusted for neuropathy?")
    assert answer.get_by_test_id("answer-text").inner_text().startswith("No answer in your documents")
    assert answer.get_by_test_id("citation").count() == 0
    assert answer.get_by_test_id("audit-id").is_visible()


def test_when_the_model_is_down_the_reader_gets_a_clear_message(
        site_with_model_down: str, reader: Reader, private_settings: Settings) -> None:
    reader.sign_in(site_with_model_down, private_settings, "onc1", ["oncology"])
    answer = reader.ask("How is the oxaliplatin dose adjusted for neuropathy?")
    text = answer.get_by_test_id("answer-text").inner_text()
    assert text.startswith("The model is unavailable right now") and "Traceback" not in text
    assert answer.get_by_test_id("audit-id").is_visible()

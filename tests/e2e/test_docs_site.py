"""The documentation site as a reader meets it: built by `mkdocs build --strict` without a
warning, served over HTTP, and every page opened in Chromium, where each link inside the
site leads somewhere (to the heading it names, for a link with an anchor) and each image
is drawn. Without Chromium these tests are skipped, saying so (they fail in CI)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlsplit

import pytest

from tests.conftest import PROJECT_ROOT
from tests.servers import free_port, serving

pytestmark = pytest.mark.e2e

MKDOCS = str(Path(sys.executable).with_name("mkdocs"))
TIMEOUT_MS = 60_000  # a page of a local server on a busy 2-core machine
GUIDES = ("image-folder", "manifest", "torchvision", "fine-tuning", "predicting", "python-api",
          "tuning", "distributed", "checkpoints", "tracking")
REFERENCE = ("parameters", "catalog", "mlflow-run", "pipelines", "api")
PAGES = ("index", "get-started", *(f"guides/{name}" for name in GUIDES),
         *(f"reference/{name}" for name in REFERENCE), "performance", "architecture")


@dataclass
class Built:
    site: Path
    returncode: int
    output: str

    @property
    def pages(self) -> set[str]:
        """The site's pages (paths from its root), but for its page of missing pages."""
        return {path.relative_to(self.site).as_posix() for path in self.site.rglob("*.html")
                if path.name != "404.html" and path.relative_to(self.site).parts[0] != "search"}


@dataclass
class Page:
    """What a page showed in the browser."""
    status: int
    ids: set[str]
    links: list[str]  # absolute, as the browser resolved them
    broken_images: list[str]
    text: str


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Built:
    """The site, built as `make docs` builds it, into a folder of its own."""
    site = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [MKDOCS, "build", "--strict", "--site-dir", str(site)], cwd=PROJECT_ROOT,
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    return Built(site, build.returncode, build.stdout + build.stderr)


def test_the_site_builds_without_a_warning_with_every_page(built):
    assert built.returncode == 0, built.output
    assert "WARNING" not in built.output, built.output
    missing = {f"{name}.html" for name in PAGES} - built.pages
    assert not missing, sorted(missing)


def test_every_page_opens_with_working_links_and_drawn_images(browser, built, tmp_path):
    assert built.returncode == 0, built.output
    command = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
               "--directory", str(built.site), "{port}"]
    with serving(command, built.site, tmp_path / "http.log", "/", free_port()) as url:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        seen = crawl(page, url)
        # Links to what is not a page (stylesheets, scripts, images, files): fetched.
        others = {target for shown in seen.values() for target in internal(shown.links, url)
                  if not target.endswith(".html")}
        unreachable = {target: status for target in sorted(others)
                       if (status := page.request.get(f"{url}/{target}").status) != 200}
    assert built.pages <= seen.keys(), sorted(built.pages - seen.keys())  # no link leads there
    assert {path: shown.status for path, shown in seen.items() if shown.status != 200} == {}
    assert unreachable == {}
    assert {path: shown.broken_images for path, shown in seen.items()
            if shown.broken_images} == {}
    assert dangling_anchors(seen, url) == []
    assert "training.optimizer.name" in seen["reference/parameters.html"].text


def crawl(page, url: str) -> dict[str, Page]:
    """Every page that a link inside the site leads to, from the home page on."""
    seen: dict[str, Page] = {}
    waiting = ["index.html"]
    while waiting:
        path = waiting.pop()
        if path in seen:
            continue
        response = page.goto(f"{url}/{path}")
        # Images below the fold may wait until scrolled to: asked for now, and awaited.
        page.evaluate("""() => Promise.all([...document.images].map(image => {
            image.loading = 'eager';
            return image.decode().catch(() => null);
        }))""")
        seen[path] = Page(
            status=response.status,
            ids=set(page.eval_on_selector_all("[id]", "all => all.map(e => e.id)")),
            links=page.eval_on_selector_all("a[href]", "all => all.map(a => a.href)"),
            broken_images=page.eval_on_selector_all(
                "img", "all => all.filter(i => !(i.complete && i.naturalWidth > 0))"
                       ".map(i => i.getAttribute('src'))"),
            text=page.locator("body").inner_text(),
        )
        waiting += [target for target in internal(seen[path].links, url)
                    if target.endswith(".html") and target not in seen]
    return seen


def internal(links: list[str], url: str) -> list[str]:
    """The paths from the site's root of the links that stay inside the site."""
    paths = []
    for link in links:
        address = urlsplit(urldefrag(link).url)
        if f"{address.scheme}://{address.netloc}" != url:
            continue
        path = address.path.lstrip("/")
        paths.append(path + "index.html" if path.endswith("/") or not path else path)
    return paths


def dangling_anchors(seen: dict[str, Page], url: str) -> list[str]:
    """The links ``page.html#anchor`` (as ``from -> to``) whose page has no such id."""
    dangling = []
    for path, shown in seen.items():
        for link in shown.links:
            target, anchor = urldefrag(link)
            for to in internal([target], url):
                if anchor and to in seen and unquote(anchor) not in seen[to].ids:
                    dangling.append(f"{path} -> {to}#{anchor}")
    return dangling

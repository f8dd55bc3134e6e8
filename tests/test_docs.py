"""The documentation is navigable: every relative link, image and #anchor in README.md, docs/*.md and
benchmarks/README.md resolves; the README stays short and keeps the Quick start's two commands (CI runs the
second one, found by `.ci/run` with a grep). Standard library and pytest only; no network."""

import re
import unicodedata
import urllib.parse
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_README_LINES = 300
QUICK_START_PREFIXES = (
    "python3 -m venv .venv && . .venv/bin/activate && pip install -e . -c constraints.txt &&",
    '. .venv/bin/activate && pip install -e ".[dev]" &&',
)
# The patterns .ci/run greps README.md with (first match) to find the two commands it runs.
CI_TEST_COMMAND = re.compile(r'^\. \.venv/bin/activate && pip install -e "\.\[dev\]" && .*pytest')
CI_QUICKSTART_COMMAND = re.compile(r"^python3 -m venv \.venv && \. \.venv/bin/activate && pip install -e \. ")


def markdown_files():
    files = [README, *sorted((ROOT / "docs").glob("*.md"))]
    benchmarks = ROOT / "benchmarks" / "README.md"
    if benchmarks.exists():
        files.append(benchmarks)
    return files


# ---------------------------------------------------------------- Markdown parsing (the parts we need)

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t]*$")
SETEXT_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
# An inline link or image: "](target)" or "](target "title")", target optionally in <...>.
INLINE_LINK = re.compile(
    r"\]\(\s*(<[^>\n]*>|[^\s()]*(?:\([^\s()]*\)[^\s()]*)*)(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)"
)
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>\n]*>|\S+)")
HTML_LINK = re.compile(r"<(?:a|img)\b[^>]*?\s(?:href|src)\s*=\s*[\"']([^\"']*)[\"']", re.I)
HTML_ANCHOR = re.compile(r"<[a-z][^>]*?\s(?:id|name)\s*=\s*[\"']([^\"']+)[\"']", re.I)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def prose_lines(text):
    """(line number, line) of every line outside fenced code blocks."""
    fence = None
    for number, line in enumerate(text.split("\n"), start=1):
        match = FENCE.match(line)
        if fence is None:
            if match:
                fence = match.group(1)
                continue
            yield number, line
        elif (
            match
            and match.group(1)[0] == fence[0]
            and len(match.group(1)) >= len(fence)
            and not line.strip()[len(match.group(1)) :].strip()
        ):
            fence = None


BLOCK_START = re.compile(r"^(?: {0,3}(?:[-*+][ \t]|\d{1,9}[.)][ \t]|>|\||<)| {4,}|\t)")


def heading_texts(text):
    """The raw text of every ATX and setext heading, in order."""
    paragraph, in_block = [], False  # the current plain paragraph's lines; inside a list, quote, table, ...
    for _, line in prose_lines(text):
        atx = ATX_HEADING.match(line)
        if atx:
            raw = re.sub(r"(?:^|[ \t]+)#+[ \t]*$", "", atx.group(2) or "")  # optional closing #s
            yield raw
            paragraph, in_block = [], False
        elif paragraph and SETEXT_UNDERLINE.match(line):
            yield " ".join(part.strip() for part in paragraph)
            paragraph = []
        elif not line.strip():
            paragraph, in_block = [], False
        elif in_block or (not paragraph and BLOCK_START.match(line)):
            paragraph, in_block = [], True
        else:
            paragraph.append(line)


def rendered_heading_text(raw):
    """What GitHub renders a heading's inline Markdown to (the text its anchor is made from)."""
    spans = []

    def keep_code(match):
        spans.append(match.group(2).strip() if match.group(2).strip() else match.group(2))
        return f"\x00{len(spans) - 1}\x00"

    text = CODE_SPAN.sub(keep_code, raw)
    text = re.sub(r"!\[([^\]]*)\]\([^)]*\)", r"\1", text)  # images: their alt text
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links: their text
    text = re.sub(r"\[([^\]]*)\]\[[^\]]*\]", r"\1", text)  # reference links
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    text = text.replace("*", "")  # emphasis
    text = re.sub(r"(?<![0-9A-Za-z])_+|_+(?![0-9A-Za-z])", "", text)  # _emphasis_, not snake_case
    text = re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", text)  # backslash escapes
    return re.sub(r"\x00(\d+)\x00", lambda match: spans[int(match.group(1))], text)


def github_slug(text):
    """GitHub's heading anchor (github-slugger): lower case, punctuation and symbols removed (letters,
    digits, marks, '_', '-' and spaces kept), each space turned into '-'."""
    text = text.strip().lower()
    text = "".join(ch for ch in text if ch in "-_ " or ch.isalnum() or _is_mark(ch))
    return text.replace(" ", "-")


def _is_mark(ch):
    return unicodedata.category(ch).startswith("M")


def anchors(path):
    """Every anchor GitHub gives the page: heading slugs with -1, -2, ... for repeats, plus HTML ids."""
    text = path.read_text(encoding="utf-8")
    seen, result = {}, set()
    for raw in heading_texts(text):
        slug = base = github_slug(rendered_heading_text(raw))
        while slug in seen:
            seen[base] += 1
            slug = f"{base}-{seen[base]}"
        seen.setdefault(slug, 0)
        result.add(slug)
    for _, line in prose_lines(text):
        result.update(HTML_ANCHOR.findall(line))
    return result


def link_targets(path):
    """(line number, target) of every link, image, reference definition and HTML href/src outside code."""
    text = path.read_text(encoding="utf-8")
    for number, line in prose_lines(text):
        outside_code = CODE_SPAN.sub(lambda match: " " * len(match.group(0)), line)
        targets = [match.group(1) for match in INLINE_LINK.finditer(outside_code)]
        targets += REFERENCE_DEFINITION.findall(outside_code) + HTML_LINK.findall(outside_code)
        for target in targets:
            if target.startswith("<") and target.endswith(">"):
                target = target[1:-1]
            yield number, target.strip()


# ---------------------------------------------------------------- the slug algorithm itself


@pytest.mark.parametrize(
    "heading, slug",
    [
        ("Quick start", "quick-start"),
        ("Web demo: the models side by side on your own photo", "web-demo-the-models-side-by-side-on-your-own-photo"),
        ("Metric definitions, and which metric says what", "metric-definitions-and-which-metric-says-what"),
        (
            "Several GPUs, several machines, several CPU processes",
            "several-gpus-several-machines-several-cpu-processes",
        ),
        ("Evaluation (`evaluate.py`): one table", "evaluation-evaluatepy-one-table"),
        ("The `--model_selection` flag", "the---model_selection-flag"),
        ("**Bold** and _emphasis_ and [a link](x.md)", "bold-and-emphasis-and-a-link"),
        ("Δ PSNR ↑ vs gray", "δ-psnr--vs-gray"),
    ],
)
def test_github_slug(heading, slug):
    assert github_slug(rendered_heading_text(heading)) == slug


def test_repeated_headings_get_numbered(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A\n\n## Notes\n\n```\n# not a heading\n```\n\n## Notes\n\nNotes\n---\n\n## Notes-1\n")
    assert anchors(page) == {"a", "notes", "notes-1", "notes-2", "notes-1-1"}


# ---------------------------------------------------------------- the repository's documentation


def _resolve(source, target):
    """The file a relative link points to, and its anchor ('' if none)."""
    path_part, _, anchor = target.partition("#")
    path_part = urllib.parse.unquote(path_part.split("?", 1)[0])
    if not path_part:
        return source, anchor
    base = ROOT if path_part.startswith("/") else source.parent
    return (base / path_part.lstrip("/")).resolve(), urllib.parse.unquote(anchor)


@pytest.mark.parametrize("source", markdown_files(), ids=lambda path: str(path.relative_to(ROOT)))
def test_relative_links_and_anchors_resolve(source):
    assert source.exists()
    broken, checked = [], 0
    for number, target in link_targets(source):
        if not target or SCHEME.match(target):  # http:, https:, mailto:, ...: not checked (no network)
            continue
        checked += 1
        where = f"{source.relative_to(ROOT)}:{number}: {target}"
        resolved, anchor = _resolve(source, target)
        if resolved != ROOT and ROOT not in resolved.parents:
            broken.append(f"{where} (outside the repository)")
            continue
        if not resolved.exists():
            broken.append(f"{where} (no such file or folder)")
            continue
        if anchor and resolved.is_file() and resolved.suffix.lower() == ".md" and anchor not in anchors(resolved):
            broken.append(
                f"{where} (no heading with anchor #{anchor} in {resolved.relative_to(ROOT)}; "
                f"anchors there: {sorted(anchors(resolved))})"
            )
    assert not broken, "broken documentation links:\n" + "\n".join(broken)
    if source == README:
        assert checked > 0  # the parser found the README's links at all


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines (at most {MAX_README_LINES})"


def test_readme_keeps_the_quick_start_commands():
    lines = README.read_text(encoding="utf-8").splitlines()
    start = lines.index("## Quick start")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    for prefix in QUICK_START_PREFIXES:
        matches = [i for i, line in enumerate(lines) if line.startswith(prefix)]
        assert len(matches) == 1, f"README.md should hold exactly one line starting with {prefix!r}"
        assert start < matches[0] < end, f"the line starting with {prefix!r} is not in the Quick start"
    # .ci/run runs the first line its pattern finds: that must be the Quick start's test command.
    ci_lines = [i for i, line in enumerate(lines) if CI_TEST_COMMAND.match(line)]
    assert ci_lines and lines[ci_lines[0]].startswith(QUICK_START_PREFIXES[1])
    assert "pytest" in lines[ci_lines[0]]
    quickstart = [i for i, line in enumerate(lines) if CI_QUICKSTART_COMMAND.match(line)]
    assert quickstart and lines[quickstart[0]].startswith(QUICK_START_PREFIXES[0])
    # the releases command 1 pins (the Quick start's numbers came from them) are in the repository
    assert (ROOT / "constraints.txt").is_file()


def test_every_docs_page_has_a_title_a_way_back_and_a_link_from_the_readme():
    readme_targets = {_resolve(README, target)[0] for _, target in link_targets(README) if not SCHEME.match(target)}
    pages = sorted((ROOT / "docs").glob("*.md"))
    assert pages
    for page in pages:
        lines = page.read_text(encoding="utf-8").splitlines()
        assert lines and re.match(r"^# \S", lines[0]), f"{page.name} does not start with a '# Title' line"
        assert any("](../README.md" in line for line in lines[1:4]), f"{page.name} has no link back to the README"
        assert page.resolve() in readme_targets, f"README.md does not link to docs/{page.name}"

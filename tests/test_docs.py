"""What the docs and the code's prose cite exists: paths, names, sections, links, CLI flags.

A reference that outlives a move or a rename sends a newcomer to a file that is not there. So:
every repository path cited by README.md, the Markdown pages under docs/, deploy/README.md, the
comments and string literals (docstrings, help texts) under common/ client/ server/
simulations/ tests/, the Makefile, pyproject.toml and the deploy files exists; a name cited
with a module (`client/training.py:synthesize`, `client/app.py.PHASES`,
`server/report.py (round_summary)`) is defined there; a numbered section (`docs/science.md
section 1`) or a quoted heading (`docs/experiments.md, "Choice of encoder"`) is a heading of
that page; every relative Markdown link resolves, anchors included; the README stays a short
product page, and every flag of its command synopsis is a flag of that command.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTHON_FOLDERS = ("common", "client", "server", "simulations", "tests")
TOP_FOLDERS = (*PYTHON_FOLDERS, "deploy", "docs")
README_MAX_LINES = 260

# A repository path starts with a top-level folder, not in the middle of another path (a
# run's docs folder under runs/ is not the repository's); `<center>`-style placeholders end
# it. An optional `:name`, `.name` (after .py) or ` (name)` names something the file defines.
_PATH = re.compile(
    r"(?<![\w./<>$~-])(?P<path>(?:" + "|".join(TOP_FOLDERS) + r")/[\w.*/-]*[\w*])"
    r"(?:(?<=\.py):(?P<attr>[A-Za-z_]\w*)|(?<=\.py) \((?P<paren>[A-Za-z_]\w*)\))?"
)
# `docs/science.md section 1`, `docs/science.md 1`: a numbered heading of that page.
_NUMBERED = re.compile(r"(?P<file>(?:docs/)?[\w-]+\.md),? (?:section )?(?P<number>\d+)\b")
# `docs/experiments.md, "Choice of encoder"`: a heading of that page.
_TITLED = re.compile(r"(?P<file>README|(?:docs/|deploy/)?[\w-]+\.md),? \"(?P<title>[^\"]+)\"")
_LINK = re.compile(r"!?\[[^\]]*\]\((?P<target>[^)\s]+)\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.M)
_FENCE = re.compile(r"^```.*?^```", re.M | re.S)
# Python 3.12 splits an f-string into tokens; its literal text is FSTRING_MIDDLE.
_STRING_TOKENS = {tokenize.STRING, getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING)}


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "deploy/README.md"]


def other_text_files() -> list[Path]:
    """Build and deployment files whose comments cite paths (pyproject also names modules)."""
    deploy = [p for p in sorted((ROOT / "deploy").rglob("*")) if p.is_file() and p.suffix != ".md"]
    return [ROOT / "Makefile", ROOT / "pyproject.toml", *deploy]


def python_files() -> list[Path]:
    return [path for folder in PYTHON_FOLDERS for path in sorted((ROOT / folder).rglob("*.py"))]


def python_prose(source: str) -> list[tuple[int, str]]:
    """(line, text) of every comment block and string literal, whitespace runs made one space.

    Consecutive comment lines form one block, so a reference wrapped over two lines is read
    whole. String literals cover docstrings and the help texts users read.
    """
    pieces: list[tuple[int, str]] = []
    block: list[str] = []
    block_start = last_comment = -1
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        line = token.start[0]
        if token.type == tokenize.COMMENT:
            if block and line != last_comment + 1:
                pieces.append((block_start, " ".join(block)))
                block = []
            if not block:
                block_start = line
            block.append(token.string.lstrip("#").strip())
            last_comment = line
        elif token.type in _STRING_TOKENS:
            pieces.append((line, token.string))
    if block:
        pieces.append((block_start, " ".join(block)))
    return [(line, re.sub(r"\s+", " ", text)) for line, text in sorted(pieces)]


def defines(path: Path, name: str) -> bool:
    """True when the Python file at `path` defines `name` (function, class, method, constant)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if node.name == name:
                return True
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
    return False


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def headings(markdown: str) -> list[str]:
    return [match.group(2) for match in _HEADING.finditer(_FENCE.sub("", markdown))]


def anchors(markdown: str) -> set[str]:
    """Every heading's anchor; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for heading in headings(markdown):
        slug = github_slug(heading)
        found.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return found


def _markdown_of(cited: str, root: Path) -> Path:
    return root / ("README.md" if cited == "README" else cited)


def broken_references(text: str, root: Path = ROOT) -> list[str]:
    """What `text` cites that `root` does not hold, one line each (empty when all resolve)."""
    problems = []
    for match in _PATH.finditer(text):
        cited, name = match.group("path"), match.group("attr") or match.group("paren")
        if dotted := re.fullmatch(r"(.+\.py)\.([A-Za-z_]\w*)", cited):  # path.py.name
            cited, name = dotted.groups()
        target = root / cited
        exists = any(root.glob(cited)) if "*" in cited else target.exists()
        if not exists:
            problems.append(f"{cited}: no such file or folder")
            continue
        if name and target.suffix == ".py" and not defines(target, name):
            problems.append(f"{cited}: defines no {name}")
    for match in _NUMBERED.finditer(text):
        target = _markdown_of(match.group("file"), root)
        if target.exists() and not any(
            re.match(rf"{match.group('number')}\b", h) for h in headings(target.read_text())
        ):
            problems.append(f"{match.group('file')}: no section numbered {match.group('number')}")
    for match in _TITLED.finditer(text):
        target = _markdown_of(match.group("file"), root)
        title = match.group("title").lower()
        if target.exists() and not any(title in h.lower() for h in headings(target.read_text())):
            problems.append(f"{match.group('file')}: no heading {match.group('title')!r}")
    return problems


def broken_links(markdown_path: Path) -> list[str]:
    """Relative links of a Markdown file whose file or heading anchor does not exist."""
    problems = []
    for match in _LINK.finditer(_FENCE.sub("", markdown_path.read_text())):
        target = match.group("target")
        if re.match(r"[a-z][a-z+.-]*:", target):  # https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        linked = (markdown_path.parent / file_part).resolve() if file_part else markdown_path
        if not linked.exists():
            problems.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked.read_text()):
            problems.append(f"{target}: no heading with that anchor")
    return problems


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_markdown_cites_only_paths_names_and_sections_that_exist(path):
    problems = broken_references(path.read_text())
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_markdown_links_resolve_to_files_and_headings(path):
    problems = broken_links(path)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", other_text_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_build_and_deploy_files_cite_only_paths_that_exist(path):
    problems = broken_references(path.read_text())
    assert not problems, "\n".join(problems)


def test_code_prose_cites_only_paths_names_and_sections_that_exist():
    problems = [
        f"{path.relative_to(ROOT)}:{line}: {problem}"
        for path in python_files()
        for line, text in python_prose(path.read_text(encoding="utf-8"))
        for problem in broken_references(text)
    ]
    assert not problems, "\n".join(problems)


def test_readme_is_a_short_product_page():
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/"


def _synopsis(readme: str) -> dict[tuple[str, ...], set[str]]:
    """Flags by command (program, subcommand words) from the README's ```bash blocks: a line
    that starts with a feddel program begins a command, indented lines continue it."""
    commands: dict[tuple[str, ...], set[str]] = {}
    current: tuple[str, ...] | None = None
    for block in re.findall(r"^```bash\n(.*?)^```", readme, re.M | re.S):
        for line in block.splitlines():
            words = line.split("#")[0].split()
            if words and words[0].startswith("feddel-"):
                current = (words[0], *[w for w in words[1:3] if re.fullmatch(r"[a-z][a-z-]*", w)])
                commands.setdefault(current, set())
            elif not line.startswith(" "):
                current = None
            if current is not None:
                commands[current].update(re.findall(r"(?<![\w-])--[a-z][\w-]*", line))
    return commands


def _parser_flags(parser, words: tuple[str, ...]) -> set[str] | None:
    """Option strings of the (sub)command `words` of `parser`; None when there is no such one."""
    for word in words:
        subparsers = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
        if not subparsers or word not in subparsers[0].choices:
            return None
        parser = subparsers[0].choices[word]
    return {option for action in parser._actions for option in action.option_strings}


def test_readme_synopsis_flags_are_flags_of_their_command():
    from feddel.client.cli import build_parser as center_parser
    from feddel.server.cli import build_parser as coordinator_parser
    from feddel.simulations.cli import build_parser as sim_parser

    parsers = {
        "feddel-sim": sim_parser(),
        "feddel-center": center_parser(),
        "feddel-coordinator": coordinator_parser(),
    }
    synopsis = _synopsis((ROOT / "README.md").read_text())
    assert {command[0] for command in synopsis} == set(parsers)
    problems = []
    for (program, *words), flags in synopsis.items():
        known = _parser_flags(parsers[program], tuple(words))
        if known is None:
            problems.append(f"{program} {' '.join(words)}: no such command")
        else:
            problems += [f"{program} {' '.join(words)}: {flag}" for flag in sorted(flags - known)]
    assert not problems, "\n".join(problems)


# --- the checker itself catches what it is for --------------------------------------------


def _fixture(text: str) -> str:
    """Fixture text with its folders and commas filled in ({docs} -> docs): so written, the
    deliberately broken references below are not read as this file's own by the prose scan."""
    return text.format(docs="docs", common="common", comma=",")


def test_checker_reports_a_missing_path_name_section_and_heading(tmp_path):
    (tmp_path / "common" / "curation").mkdir(parents=True)
    (tmp_path / "common" / "curation" / "kmeans.py").write_text("def assign():\n    pass\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "science.md").write_text("# Science\n\n## 1. MedDEL\n\ntext\n")
    (tmp_path / "README.md").write_text("# FedDEL\n\n## What we measured\n")
    good = _fixture(
        "see {common}/curation/kmeans.py:assign, {common}/curation/kmeans.py.assign, "
        "{common}/curation/ (a folder), {common}/*/kmeans.py, {docs}/science.md section 1 and "
        'README{comma} "What we measured".'
    )
    assert broken_references(good, tmp_path) == []
    bad = {
        "{common}/curation/missing.py": "{common}/curation/missing.py: no such file or folder",
        "{common}/*/missing.py": "{common}/*/missing.py: no such file or folder",
        "{common}/curation/kmeans.py:lloyd": "{common}/curation/kmeans.py: defines no lloyd",
        "{common}/curation/kmeans.py (lloyd)": "{common}/curation/kmeans.py: defines no lloyd",
        "{common}/curation/kmeans.py.lloyd": "{common}/curation/kmeans.py: defines no lloyd",
        "{docs}/science.md section 2": "{docs}/science.md: no section numbered 2",
        "{docs}/science.md 2": "{docs}/science.md: no section numbered 2",
        'README{comma} "Choice of encoder"': "README: no heading 'Choice of encoder'",
        '{docs}/missing.md, "Notes"': "{docs}/missing.md: no such file or folder",
    }
    found = {text: broken_references(f"see {_fixture(text)}.", tmp_path) for text in bad}
    assert found == {text: [_fixture(problem)] for text, problem in bad.items()}


def test_checker_ignores_paths_inside_other_paths_and_placeholders():
    text = _fixture(
        "runs/demo/{docs}/x.md, /opt/tests/x.py, ~/{docs}/x.md, <state>/{docs}/x.md, $HOME/{docs}/x"
    )
    assert broken_references(text) == []


def test_checker_reports_links_to_missing_files_and_anchors(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "design.md").write_text("# Design\n\n## The round, phase by phase\n")
    page = tmp_path / "README.md"
    page.write_text(
        _fixture(
            "## Intro\n\n[ok]({docs}/design.md#the-round-phase-by-phase) [ok](#intro) "
            "[web](https://example.org/x) ![img]({docs}/design.md)\n[gone]({docs}/missing.md) "
            "[gone]({docs}/design.md#nothing) [gone](#outro)\n\n```\n[code](nowhere.md)\n```\n"
        )
    )
    assert broken_links(page) == [
        _fixture("{docs}/missing.md: no such file"),
        _fixture("{docs}/design.md#nothing: no heading with that anchor"),
        "#outro: no heading with that anchor",
    ]


def test_python_prose_joins_wrapped_comments_and_reads_string_literals():
    source = _fixture(
        'x = 1  # see {common}/a.py\n# and {common}/b.py\n\n# apart\nname = "{docs}/c.md"\ny = z\n'
    )
    assert python_prose(source) == [
        (1, _fixture("see {common}/a.py and {common}/b.py")),
        (4, "apart"),
        (5, _fixture('"{docs}/c.md"')),
    ]


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("What we measured", "what-we-measured"),
        (
            "The FedSGD comparison, 3 seeds (`make fedsgd`, `runs/fedsgd3`)",
            "the-fedsgd-comparison-3-seeds-make-fedsgd-runsfedsgd3",
        ),
        ("OptiDEL (`--method optidel`)", "optidel---method-optidel"),
        ("1. MedDEL, DataDEL and NormDEL", "1-meddel-datadel-and-normdel"),
    ],
)
def test_github_slug_matches_githubs_anchors(heading, slug):
    assert github_slug(heading) == slug


def test_repeated_headings_get_numbered_anchors():
    assert anchors("# A\n\n## Notes\n\n## Notes\n") == {"a", "notes", "notes-1"}

"""The notes beside the code: a static site with one side-by-side page per algorithm
script.

Each script is cut into sections at its top-level definitions (and, inside `train`,
at its full-line comments); a section's docstrings and leading comments are rendered
as prose on the left, its code on the right with the file's own line numbers.
Everything below the banner comment containing "identical in every script" is folded.
The index shows the README's algorithm, glossary and concept → code tables, linked to
the sections; each section links to the tests that name it, shown on pages of their
own. Everything is parsed at build time, so the site follows the files as they
change.

Usage: python docs/build.py [--out site]

An --out that cannot be a folder (an existing file, a place that cannot be written) or
an unknown flag stops it with one line and exit code 2, nothing written; Ctrl-C stops
it with exit code 130.
"""

import argparse
import ast
import html
import inspect
import io
import os
import re
import sys
import tempfile
import tokenize
from dataclasses import dataclass, field
from pathlib import Path
from textwrap import dedent

import markdown
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer

ROOT = Path(__file__).resolve().parent.parent
BANNER = "identical in every script"
CONTRACT = ROOT / "tests/test_contract.py"
# README sections the index shows
TABLES = ["The algorithms", "Concept → code", "Glossary of symbols"]
GROUPED = {
    "imports": (ast.Import, ast.ImportFrom),
    "assignments": (ast.Assign, ast.AnnAssign, ast.AugAssign),
}
DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)

CSS = """
body { margin: 0; font: 15px/1.5 system-ui, sans-serif; color: #222; }
header { padding: 8px 16px; background: #f4f4f4; border-bottom: 1px solid #ddd; }
header a { margin-right: 10px; }
main { padding: 0 16px 40px; }
.sec { border-bottom: 1px solid #eee; padding: 8px 0; }
.sec > * { min-width: 0; }
.prose > :first-child { margin-top: 0; }
.prose pre {
  white-space: pre-wrap; font-size: 12.5px; background: #fafafa; padding: 4px 6px;
}
/* a wrapped equation hangs */
.prose pre > span { display: block; padding-left: 4ch; text-indent: -4ch; }
.prose h3 { font-size: 16px; margin: 0; }
.tests { font-size: 13px; color: #555; }
pre.code {
  margin: 0; overflow-x: auto;
  font: 12px/1.45 ui-monospace, Menlo, Consolas, monospace;
}
.ln {
  display: inline-block; width: 4ch; margin-right: 1.5ch; text-align: right;
  color: #aaa; user-select: none;
}
span[title] { text-decoration: underline dotted #999; cursor: help; }
details.plumbing > summary { cursor: pointer; padding: 10px 0; font-weight: 600; }
table { border-collapse: collapse; margin: 8px 0 24px; }
th, td { border: 1px solid #ddd; padding: 4px 8px; vertical-align: top; }
@media (min-width: 900px) {
  .sec {
    display: grid; grid-template-columns: minmax(0, 5fr) minmax(0, 8fr); gap: 24px;
    align-items: start;
  }
}
@media (max-width: 899px) { .prose { margin-bottom: 8px; } }
"""


@dataclass
class Section:
    start: int
    """first line of the file in this section"""
    names: list[str] = field(default_factory=list)
    """top-level names defined here (the first one is its anchor)"""
    prose: list[str] = field(default_factory=list)
    """docstrings and comment lines, in order ("" = paragraph break)"""
    code: list[int] = field(default_factory=list)
    """line numbers shown on the right"""


def warn(msg: str):
    print(f"warning: {msg}", file=sys.stderr)


# ---- reading a Python file into sections ----


def comment_lines(source: str) -> dict[int, str]:
    """Line number -> text of every full-line comment (tokenize, so a '#' inside a
    string is not one)."""
    comments = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and not tok.line[: tok.start[1]].strip():
            comments[tok.start[0]] = tok.string[1:].removeprefix(" ")
    return comments


def docstring_node(node) -> ast.Expr | None:
    """The statement holding the docstring of a module, def or class."""
    if not isinstance(node, (ast.Module, *DEFINITIONS)) or not node.body:
        return None
    first = node.body[0]
    value = getattr(getattr(first, "value", None), "value", None)
    if isinstance(first, ast.Expr) and isinstance(value, str):
        return first
    return None


def node_names(node) -> list[str]:
    if isinstance(node, DEFINITIONS):
        return [node.name]
    targets = getattr(node, "targets", None) or [getattr(node, "target", None)]
    names = []
    for t in targets:
        if t is not None:
            names += [n.id for n in ast.walk(t) if isinstance(n, ast.Name)]
    return names


def group_of(node) -> str | None:
    return next((g for g, types in GROUPED.items() if isinstance(node, types)), None)


def sections_of(source: str) -> list[Section]:
    """Cut a file at its top-level statements (consecutive imports or assignments
    stay together) and inside `train` at each run of full-line comments. A section's
    leading comments and any docstring are its prose; prose with no code yet waits
    for the next statement (so the module docstring sits beside the imports)."""
    tree = ast.parse(source)
    lines = source.splitlines()
    comments = comment_lines(source)
    cuts, names, docstrings, prev = set(), {}, {}, None
    for node in tree.body:
        decorators = [d.lineno for d in getattr(node, "decorator_list", [])]
        first = min([node.lineno] + decorators)
        # take in the comments and blank lines just above
        start = first
        above = prev.end_lineno if prev else 0
        while start - 1 > above and (
            start - 1 in comments or not lines[start - 2].strip()
        ):
            start -= 1
        same_group = prev and group_of(node) and group_of(node) == group_of(prev)
        if not (same_group and comments.keys().isdisjoint(range(start, first))):
            cuts.add(start)
        names[first] = node_names(node)
        doc = docstring_node(node)
        if not doc and node is docstring_node(tree):
            doc = node
        if doc:
            docstrings.update(
                {ln: None for ln in range(doc.lineno, doc.end_lineno + 1)}
            )
            docstrings[doc.lineno] = inspect.cleandoc(doc.value.value)
        if isinstance(node, ast.FunctionDef) and node.name == "train":
            for ln in range(node.lineno + 1, node.end_lineno + 1):
                if ln in comments and ln - 1 not in comments:
                    cuts.add(ln)
        prev = node

    sections: list[Section] = []
    for ln, line in enumerate(lines, 1):
        if ln in cuts and (not sections or sections[-1].code):
            sections.append(Section(ln))
        if not sections:
            continue
        sec = sections[-1]
        sec.names += names.get(ln, [])
        if ln in docstrings:
            if docstrings[ln] is not None:
                sec.prose += ["", docstrings[ln], ""]
        elif not sec.code and ln in comments:
            sec.prose.append(comments[ln])
        elif not sec.code and not line.strip():
            sec.prose.append("")
        else:
            sec.code.append(ln)
    for sec in sections:
        while sec.code and not lines[sec.code[-1] - 1].strip():
            sec.code.pop()
    return sections


# ---- rendering ----


def paragraph_html(p: str) -> str:
    """Markdown, except that a paragraph with indented lines (aligned equations, usage
    lines) stays as written, one line per equation."""
    if any(line[:1].isspace() for line in p.splitlines()):
        spans = [f"<span>{html.escape(line)}</span>" for line in dedent(p).splitlines()]
        return "<pre>" + "".join(spans) + "</pre>"
    return markdown.markdown(p) if p else ""


def prose_html(parts: list[str]) -> str:
    """Paragraphs; a line between runs of one symbol (`# ── Networks ──`,
    `# ---- collect ----`) is a heading."""
    out, paragraph = [], []
    for line in "\n".join(parts).splitlines() + [""]:
        heading = re.fullmatch(r"([^\w\s])\1+ *(.+?) *([^\w\s])\3+", line)
        if heading or not line.strip():
            out.append(paragraph_html("\n".join(paragraph)))
            if heading:
                out.append(f"<h3>{html.escape(heading[2])}</h3>")
            paragraph = []
        else:
            paragraph.append(line)
    return "\n".join(filter(None, out))


def highlighted_lines(source: str, glossary: dict[str, str]) -> list[str]:
    """The file's lines as highlighted HTML (one entry per line), glossary names
    wrapped with a tooltip."""
    lexer = PythonLexer(stripnl=False, ensurenl=False)
    out = highlight(source, lexer, HtmlFormatter(nowrap=True))

    def tip(m):
        title = glossary.get(m[2])
        if not title:
            return m[0]
        return f'<span class="{m[1]}" title="{html.escape(title)}">{m[2]}</span>'

    name = r'<span class="(n\w?)">([A-Za-z_]\w*)</span>'
    return [re.sub(name, tip, line) for line in out.split("\n")]


def section_html(
    stem: str, sec: Section, code: list[str], tests: list[tuple[str, str]]
) -> str:
    anchor = f' id="{stem}-{sec.names[0]}"' if sec.names else ""
    extra = "".join(f'<span id="{stem}-{n}"></span>' for n in sec.names[1:])
    links = ", ".join(f'<a href="{href}">{name}</a>' for name, href in tests)
    tested = f'<p class="tests">Tested by: {links}</p>' if links else ""
    lines = "\n".join(f'<span class="ln">{ln}</span>{code[ln - 1]}' for ln in sec.code)
    prose = f'<div class="prose">{extra}{prose_html(sec.prose)}{tested}</div>'
    return (
        f'<section class="sec"{anchor}>{prose}<pre class="code">{lines}</pre></section>'
    )


def page(title: str, body: str, root: str, scripts: list[str]) -> str:
    nav = "".join(f'<a href="{root}{Path(s).stem}.html">{s}</a>' for s in scripts)
    style = CSS + HtmlFormatter().get_style_defs("pre.code")
    viewport = "width=device-width, initial-scale=1"
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="{viewport}"><title>{title}</title>'
        f"<style>{style}</style></head>\n"
        f'<body><header><a href="{root}index.html">index</a>{nav}</header>\n'
        f"<main><h1>{title}</h1>\n{body}\n</main></body></html>\n"
    )


# ---- tests: which test functions name which definitions ----


def is_load(node) -> bool:
    return isinstance(node, ast.Call) and getattr(node.func, "id", None) == "load"


def script_aliases(tree) -> set[str]:
    """Names a test file binds to a loaded script: `ppo = load("ppo.py")`,
    `module, seen = load(...), {}`."""
    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
            pairs = [(target, value)]
            if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple):
                pairs = zip(target.elts, value.elts)
            for t, v in pairs:
                if isinstance(t, ast.Name) and is_load(v):
                    aliases.add(t.id)
    return aliases


def names_in(node, aliases: set[str]) -> set[str]:
    """Identifiers a piece of test code mentions: names, strings that are identifiers
    (`setattr(m, "train", ...)`, a list of block names), and attributes of a loaded
    script (`ppo.compute_gae`, not `rms.update`)."""
    found = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            found.add(n.id)
        elif isinstance(n, ast.Attribute):
            if getattr(n.value, "id", None) in aliases or is_load(n.value):
                found.add(n.attr)
        elif isinstance(n, ast.Constant) and isinstance(n.value, str):
            if n.value.isidentifier():
                found.add(n.value)
    return found


def mentions_by_test(path: Path) -> dict[str, set[str]]:
    """test function -> the names it mentions, itself or through the module-level
    helpers and constants it uses."""
    if not path.exists():
        return {}
    tree = ast.parse(path.read_text())
    aliases = script_aliases(tree)
    helpers = {}
    for node in tree.body:
        for name in node_names(node):
            helpers[name] = names_in(node, aliases)
    refs = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test"):
            own = names_in(node, aliases)
            used = [helpers[n] for n in own if n in helpers and n != node.name]
            refs[node.name] = own.union(*used)
    return refs


# ---- the README's tables ----


def readme_tables() -> dict[str, tuple[list[str], list[list[str]]]]:
    """The README's tables that the index shows, as (header, rows) with cells split on
    unescaped '|'; a missing one is empty, with a warning."""
    parts = re.split(r"^## (.+)$", (ROOT / "README.md").read_text(), flags=re.M)
    sections = {title.strip(): text for title, text in zip(parts[1::2], parts[2::2])}
    tables = {}
    for title in TABLES:
        found = re.search(r"^\|.*(?:\n\|.*)*", sections.get(title, ""), flags=re.M)
        if not found:
            warn(f"README has no table under '## {title}'")
        lines = found[0].splitlines() if found else []
        rows = []
        for line in lines:
            cells = re.split(r"(?<!\\)\|", line.strip()[1:-1])
            rows.append([c.strip() for c in cells])
        tables[title] = (rows[0], rows[2:]) if rows else ([], [])
    return tables


def table_md(header: list[str], rows: list[list[str]]) -> str:
    if not header:
        return ""
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(r) + " |" for r in lines)


def table_html(header: list[str], rows: list[list[str]]) -> str:
    return markdown.markdown(table_md(header, rows), extensions=["tables"])


def column(header: list[str], word: str) -> int | None:
    return next((i for i, h in enumerate(header) if word in h.lower()), None)


def backticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def glossary_titles(header: list[str], rows: list[list[str]]) -> dict[str, str]:
    """Code name -> tooltip built from every other column of its rows ("symbol: γ",
    "meaning: ...")."""
    code = column(header, "code")
    if code is None:
        return {}
    titles: dict[str, list[str]] = {}
    for row in rows:
        fields = []
        for i, (h, c) in enumerate(zip(header, row)):
            if i != code:
                fields.append(f"{h}: {c.replace('`', '').replace(chr(92), '')}")
        text = "\n".join(fields)
        for name in backticked(row[code]):
            if name.isidentifier():
                titles.setdefault(name, []).append(text)
    return {name: "\n\n".join(t) for name, t in titles.items()}


def link_concepts(
    header: list[str], rows: list[list[str]], anchors: dict[str, dict[str, str]]
) -> list[list[str]]:
    """Concept → code rows with each backticked name linked to its section in every
    listed script that has it."""
    scol, fcol = column(header, "script"), column(header, "function")
    if scol is None or fcol is None:
        return rows
    linked = []
    for row in rows:
        stems = []
        for s in backticked(row[scol]):
            if s.endswith(".py") and Path(s).stem in anchors:
                stems.append(Path(s).stem)

        def link(m):
            name = m[1]
            if not name.isidentifier():
                return m[0]
            found = [(s, anchors[s][name]) for s in stems if name in anchors[s]]
            if stems and not found:
                where = ", ".join(stems)
                warn(f"README Concept → code names `{name}`, not defined in {where}")
            if len(found) <= 1:
                return f"[`{name}`]({found[0][1]})" if found else m[0]
            # one link per script
            return f"`{name}` " + " ".join(f"[{s}]({href})" for s, href in found)

        def link_script(m):
            if m[1] not in anchors:
                return m[0]
            return f"[`{m[1]}.py`]({m[1]}.html)"

        row = list(row)
        row[scol] = re.sub(r"`(\w+)\.py`", link_script, row[scol])
        row[fcol] = re.sub(r"`([^`]+)`", link, row[fcol])
        linked.append(row)
    return linked


# ---- the site ----


def build_file(
    path: Path,
    out: Path,
    root: str,
    scripts: list[str],
    glossary: dict[str, str],
    tests: tuple = (),
    plumbing_tests: tuple = (),
) -> dict[str, str]:
    """Write one side-by-side page for path; return {name: href from the site root}
    of its anchors. tests and plumbing_tests are (test page, {test: names it
    mentions}) pairs; the latter apply below the banner only."""
    source = path.read_text()
    stem = path.stem
    code = highlighted_lines(source, glossary)
    sections = sections_of(source)
    banners = [ln for ln, text in comment_lines(source).items() if BANNER in text]
    fold = None
    if banners:
        starts = [i for i, sec in enumerate(sections) if sec.start <= banners[0]]
        fold = max(starts, default=None)
    summary = "Run plumbing — identical in every script"
    parts = []
    for i, sec in enumerate(sections):
        if i == fold:
            parts.append(f'<details class="plumbing"><summary>{summary}</summary>')
        sources = tests
        if fold is not None and i >= fold:
            sources += plumbing_tests
        links = []
        for test_page, refs in sources:
            for t, names in refs.items():
                if set(sec.names) & names:
                    links.append((t, f"{test_page}#{Path(test_page).stem}-{t}"))
        parts.append(section_html(stem, sec, code, links))
    if fold is not None:
        parts.append("</details>")
    rel = path.relative_to(ROOT).with_suffix(".html")
    (out / rel).write_text(page(path.name, "\n".join(parts), root, scripts))
    return {n: f"{rel.as_posix()}#{stem}-{n}" for sec in sections for n in sec.names}


def build(out: Path):
    tables = readme_tables()
    algo_header, algo_rows = tables["The algorithms"]
    listed = [s for row in algo_rows for s in backticked(row[0]) if s.endswith(".py")]
    for s in [s for s in listed if not (ROOT / s).exists()]:
        warn(f"README names {s}, which does not exist")
    scripts = [s for s in listed if (ROOT / s).exists()]
    if not scripts:
        scripts = sorted(p.name for p in ROOT.glob("*.py"))
    glossary = glossary_titles(*tables["Glossary of symbols"])
    (out / "tests").mkdir(parents=True, exist_ok=True)

    candidates = [ROOT / f"tests/test_{Path(s).stem}.py" for s in scripts]
    test_files = [f for f in candidates + [CONTRACT] if f.exists()]
    test_anchors = {}
    for f in test_files:
        test_anchors[f.stem] = build_file(f, out, "../", scripts, glossary)
    contract = ((f"tests/{CONTRACT.stem}.html", mentions_by_test(CONTRACT)),)
    anchors = {}
    for script in scripts:
        stem = Path(script).stem
        mentions = mentions_by_test(ROOT / f"tests/test_{stem}.py")
        tests = ((f"tests/test_{stem}.html", mentions),)
        page_anchors = build_file(
            ROOT / script, out, "", scripts, glossary, tests, contract
        )
        anchors[stem] = test_anchors.get(f"test_{stem}", {}) | page_anchors

    algo_rows = [
        [re.sub(r"\]\((\w+)\.py\)", r"](\1.html)", c) for c in row] for row in algo_rows
    ]
    concept_header, concept_rows = tables["Concept → code"]
    concept_rows = link_concepts(concept_header, concept_rows, anchors)
    test_links = [
        f'<li><a href="tests/{f.stem}.html">{f.name}</a></li>' for f in test_files
    ]
    body = "\n".join(
        [
            "<h2>The algorithms</h2>",
            table_html(algo_header, algo_rows),
            '<h2>Concept → code</h2><div id="concepts">',
            table_html(concept_header, concept_rows),
            "</div><h2>Glossary of symbols</h2>",
            table_html(*tables["Glossary of symbols"]),
            "<h2>Tests</h2><ul>",
            *test_links,
            "</ul>",
        ]
    )
    intro = (
        "<p>One page per script: its docstrings and comments on the left, its code on "
        "the right, cut at each definition and at the stages of <code>train</code>. "
        "Names in the code underlined with dots explain their symbol when you point at "
        "them.</p>"
    )
    title = "Deep RL, one file each: the notes beside the code"
    (out / "index.html").write_text(page(title, intro + body, "", scripts))


def check(ok, msg: str):
    """Refuse bad input: one line on stderr, exit code 2, nothing written."""
    if not ok:
        print(f"error: docs/build.py: {msg}", file=sys.stderr)
        sys.exit(2)


class Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """argparse's usage and error lines, as this tool's one line."""
        check(False, message)


def main():
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", default=str(ROOT / "site"), help="folder to write the site to"
    )
    out = parser.parse_args().out
    check(out.strip(), "--out '': name a folder")
    is_file = os.path.lexists(out) and not os.path.isdir(out)
    check(not is_file, f"--out {out} is a file; name a folder")
    try:  # the folder, and a trial folder in it: can the site be written there?
        os.makedirs(out, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(dir=out))
    except OSError as e:
        check(False, f"--out: cannot write a folder at {out}: {e.strerror}")
    try:
        build(Path(out))
    except KeyboardInterrupt:
        print(f"interrupted: {out} may hold part of the site", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()

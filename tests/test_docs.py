"""The docs are a course that runs: every ```python block in docs/NN-*.md is executed here.

A chapter's blocks run in order in one namespace (so later snippets build on earlier ones), with a
fresh temporary directory as the working directory, so the docs can never drift from the code.
```bash blocks are shown, not run; for those we check that the flags they use exist.
"""
import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
CHAPTERS = sorted(DOCS.glob("[0-9][0-9]-*.md"))
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
LINK = re.compile(r"\]\(([^)\s]+)\)")
FIGURES = ["windows.png", "loss.png", "pr_f1.png"]


def code_blocks(path, language):
    """(first line number, code) for each fenced block of `language` in a Markdown file."""
    text = path.read_text(encoding="utf-8")
    for match in FENCE.finditer(text):
        if match.group(1) == language:
            yield text.count("\n", 0, match.start(2)) + 1, match.group(2)


def test_there_is_a_course():
    assert [p.name[:2] for p in CHAPTERS] == ["01", "02", "03", "04", "05", "06", "07", "08"]
    # Chapters 1-7 are built around snippets; 8 is the GPU recipe, shown as commands.
    for chapter in CHAPTERS[:7]:
        assert list(code_blocks(chapter, "python")), f"{chapter.name} has no python snippets"


@pytest.mark.parametrize("chapter", CHAPTERS[:7], ids=lambda p: p.stem)
def test_chapter_snippets_run(chapter, tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__docs__"}
    for line, code in code_blocks(chapter, "python"):
        # Blank lines in front, so a traceback points at the right line of the Markdown file.
        exec(compile("\n" * (line - 1) + code, str(chapter), "exec"), namespace)


def test_table_of_contents_links_every_chapter_in_order():
    toc = (DOCS / "README.md").read_text(encoding="utf-8")
    linked = [target for target in LINK.findall(toc) if re.match(r"\d\d-", target)]
    assert linked == [p.name for p in CHAPTERS]


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")), ids=lambda p: p.stem)
def test_relative_links_point_at_files_that_exist(page):
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if "://" in target or target.startswith("#"):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{page.name} links to {target}, which does not exist"


def test_committed_figures_are_small_pngs():
    for name in FIGURES:
        data = (DOCS / "figures" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        assert len(data) < 100_000, f"{name} is {len(data)} bytes; keep figures under 100 KB"


def test_make_figures_script_runs(tmp_path):
    pytest.importorskip("matplotlib", reason="figures need the plot extra (matplotlib)")
    # A 3-epoch demo instead of 40 (the committed figures come from the full one), on one thread:
    # tiny models gain nothing from more, and on a busy machine lose a lot.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, str(DOCS / "make_figures.py"), "--out-dir", str(tmp_path), "--demo-epochs", "3"],
                   check=True, cwd=tmp_path, timeout=300, env=env, capture_output=True)
    for name in FIGURES:
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < 100_000, name


def _help(script):
    """The --help text of a command the docs show, from its main(argv) (evaluate.py and train.py only call them)."""
    import minispan.answer
    import minispan.download
    import minispan.evaluate_cli
    import minispan.train_cli

    main = {"train.py": minispan.train_cli.main, "evaluate.py": minispan.evaluate_cli.main,
            "-m minispan.download": minispan.download.main, "-m minispan.answer": minispan.answer.main}[script]
    with contextlib.redirect_stdout(io.StringIO()) as out, pytest.raises(SystemExit):
        main(["--help"])
    return out.getvalue()


def test_shown_commands_use_flags_that_exist():
    """```bash blocks are not run (chapter 8's need a GPU and the real data), so check their flags."""
    checked = 0
    for page in sorted(DOCS.glob("*.md")):
        for _, block in code_blocks(page, "bash"):
            for command in re.sub(r"\\\n", " ", block).splitlines():
                script = re.search(r"train\.py|evaluate\.py|-m minispan\.(download|answer)", command)
                if script is None:
                    continue
                helptext = _help(script.group())
                for flag in re.findall(r"(?<!\S)(--?[a-z][a-z0-9-]*)", command[script.end():]):
                    assert re.search(rf"(?<![\w-]){flag}(?![\w-])", helptext), \
                        f"{page.name}: `{script.group()}` has no option {flag}"
                    checked += 1
    assert checked > 10  # the parser did find the commands

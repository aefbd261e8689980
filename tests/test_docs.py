"""The docs hold together: every link and image resolves, and every flag they name exists.

README.md and docs/*.md are read as Markdown:

- every relative link and image (inline, reference-style or HTML) must name a file inside the
  repository, and a ``#anchor`` into a Markdown file must name one of its headings (GitHub's slugs);
- on a command line (a fenced code block's line, backslash continuations joined, or an inline code
  span that starts with a command), each ``--flag`` must be one of that command's flags: ``python
  train.py``, ``python -m vae.evaluate|visualize|gaps|toy``, the console scripts of pyproject.toml,
  ``python benchmarks/*.py``, and the script after ``torchrun`` / ``python -m vae.launch`` (the
  launcher's own options are torchrun's and are not checked);
- every other ``--flag`` (prose, inline code, comments, the lines of other programs) must be a
  flag of at least one of those commands (torchrun's included).

The flags are read from the commands' own argparse parsers, in-process: each ``main(argv)`` is
called with argparse's parsing stopped at its first ``parse_known_args``, which hands over the
parser (``--no-X`` forms included). A ``main`` that cannot be caught that way is asked for its
``--help`` in a subprocess instead.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import re
import shlex
import subprocess
import sys
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pytest

REPO = Path(__file__).resolve().parents[1]


def doc_files(root: Path = REPO) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


# ---------------------------------------------------------------- Markdown


@dataclass
class Block:
    lang: str
    start: int  # line number (1-based) of its first line
    lines: list[str]


@dataclass
class Markdown:
    path: Path
    prose: list[tuple[int, str]] = field(default_factory=list)  # (line number, line) outside fences
    blocks: list[Block] = field(default_factory=list)


_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([\w+-]*)")


def parse_markdown(path: Path) -> Markdown:
    doc = Markdown(path)
    fence: Optional[str] = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        match = _FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)
            doc.blocks.append(Block(match.group(2).lower(), number + 1, []))
        elif fence is not None and line.strip().startswith(fence[0] * len(fence)) and not line.strip().strip(fence[0]):
            fence = None
        elif fence is not None:
            doc.blocks[-1].lines.append(line)
        else:
            doc.prose.append((number, line))
    return doc


_CODE_SPAN = re.compile(r"(`+)(.+?)\1")


def code_spans(text: str) -> list[str]:
    return [m.group(2).strip() for m in _CODE_SPAN.finditer(text)]


def without_code_spans(text: str) -> str:
    return _CODE_SPAN.sub(" ", text)


_INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
_REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")
_HTML_LINK = re.compile(r"""<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*["']([^"']+)["']""", re.I)


def links(doc: Markdown) -> list[tuple[int, str]]:
    """(line number, target) of every link and image outside code."""
    found = []
    for number, line in doc.prose:
        text = without_code_spans(line)
        found += [(number, m.group(1)) for m in _INLINE_LINK.finditer(text)]
        found += [(number, m.group(1)) for m in _REFERENCE_DEF.finditer(text)]
        found += [(number, m.group(1)) for m in _HTML_LINK.finditer(text)]
    return found


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading's text (github-slugger): markup dropped, lower case, punctuation
    removed except ``-`` and ``_``, each space a ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images: their text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    text = re.sub(r"(\*+|(?<!\w)_+|_+(?!\w))", "", text)  # emphasis markers, not snake_case
    text = text.strip().lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LNM")
    return kept.replace(" ", "-")


def anchors(doc: Markdown) -> set[str]:
    """The heading anchors of a Markdown file, duplicates numbered as GitHub does."""
    seen: dict[str, int] = {}
    result = set()
    for _, line in doc.prose:
        match = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = github_slug(match.group(1))
        anchor = slug if slug not in seen else f"{slug}-{seen[slug]}"
        seen[slug] = seen.get(slug, 0) + 1
        result.add(anchor)
    return result


def broken_links(files: list[Path], root: Path) -> tuple[list[str], int]:
    """Every link that does not resolve, as 'file:line: target (why)'; and how many were checked."""
    problems, checked = [], 0
    parsed = {path.resolve(): parse_markdown(path) for path in files}
    for path in files:
        doc = parsed[path.resolve()]
        for number, target in links(doc):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:, ...
                continue
            checked += 1
            where = f"{path.relative_to(root)}:{number}: {target}"
            file_part, _, anchor = target.partition("#")
            resolved = (path.parent / file_part).resolve() if file_part else path.resolve()
            try:
                resolved.relative_to(root.resolve())
            except ValueError:
                problems.append(f"{where} (outside the repository)")
                continue
            if not resolved.exists():
                problems.append(f"{where} (no such file)")
                continue
            if anchor and resolved.suffix == ".md":
                target_doc = parsed.get(resolved) or parse_markdown(resolved)
                if anchor not in anchors(target_doc):
                    problems.append(f"{where} (no heading with anchor #{anchor})")
    return problems, checked


# ---------------------------------------------------------------- the commands and their flags


class _Caught(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser


def parser_flags(parser: argparse.ArgumentParser) -> set[str]:
    flags = set()
    for action in parser._actions:
        flags.update(s for s in action.option_strings if s.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= parser_flags(sub)
    return flags


def flags_of_main(main: Callable, help_command: list[str]) -> set[str]:
    """The long flags of ``main(argv)``'s parser, caught at its first parse; else read from --help.

    While ``main([])`` runs, every argparse parse raises, so no command gets past its flags.
    """
    def catch(self, args=None, namespace=None):
        raise _Caught(self)

    original = argparse.ArgumentParser.parse_known_args
    argparse.ArgumentParser.parse_known_args = catch
    try:
        main([])
    except _Caught as caught:
        return parser_flags(caught.parser)
    except BaseException:  # noqa: BLE001 - any other way out: ask the command itself
        pass
    finally:
        argparse.ArgumentParser.parse_known_args = original
    out = subprocess.run([sys.executable, *help_command, "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, f"{' '.join(help_command)} --help failed: {out.stderr[-500:]}"
    return set(re.findall(r"(?<![\w-])--[a-zA-Z][\w-]*", out.stdout))


def _module_main(module: str, function: str = "main") -> Callable:
    return getattr(importlib.import_module(module), function)


def _script_main(path: Path) -> Callable:
    spec = importlib.util.spec_from_file_location(f"_docs_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


LAUNCHER = "launcher"  # torchrun, python -m vae.launch, fullcov-torchrun: options before the script are torchrun's


def console_scripts(root: Path = REPO) -> dict[str, str]:
    """``[project.scripts]`` of pyproject.toml: name -> 'module:function'."""
    text = (root / "pyproject.toml").read_text(encoding="utf-8")
    section = re.search(r"^\[project\.scripts\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
    return dict(re.findall(r'^\s*([\w.-]+)\s*=\s*"([^"]+)"', section.group(1), re.M)) if section else {}


class Commands:
    """Which command a command line names, and its flags (read once per command)."""

    def __init__(self, root: Path = REPO):
        self.root = root
        self.scripts = console_scripts(root)

    def resolve(self, words: list[str]) -> tuple[Optional[str], int]:
        """(the command's key, the index of its first argument), or (None, 0) for a program not ours.

        Keys: 'vae.<module>' for our modules (train.py is 'vae.train'), 'benchmarks/<name>.py',
        or LAUNCHER.
        """
        if not words:
            return None, 0
        program = words[0]
        if program in ("torchrun",):
            return LAUNCHER, 1
        if program in self.scripts:
            module = self.scripts[program].partition(":")[0]
            return (LAUNCHER if module == "vae.launch" else self.module_key(module)), 1
        if re.fullmatch(r"python[\d.]*", program) and len(words) > 1:
            if words[1] == "-m" and len(words) > 2:
                key = self.module_key(words[2])
                return (LAUNCHER if key == "vae.launch" else key), 3
            if words[1].endswith(".py"):
                return self.script_key(words[1]), 2
        return None, 0

    def module_key(self, module: str) -> Optional[str]:
        if module in ("vae.toy.cli", "vae.toy.__main__"):
            return "vae.toy"
        return module if module.startswith("vae.") else None

    def script_key(self, script: str) -> Optional[str]:
        if script == "train.py":
            return "vae.train"
        if script.startswith("benchmarks/"):
            return script
        return None

    @functools.lru_cache(maxsize=None)
    def flags(self, key: str) -> set[str]:
        if key == LAUNCHER:
            from torch.distributed.run import get_args_parser

            return parser_flags(get_args_parser())
        if key.startswith("benchmarks/"):
            path = self.root / key
            assert path.is_file(), f"the docs name {key}, which does not exist"
            return flags_of_main(_script_main(path), [key])
        module = "vae.toy.cli" if key == "vae.toy" else key
        try:
            main = _module_main(module)
        except (ImportError, AttributeError) as err:
            raise AssertionError(f"the docs name the command {key}, which has no main(argv): {err}") from err
        return flags_of_main(main, ["-m", key])

    def all_keys(self) -> list[str]:
        keys = ["vae.train", "vae.evaluate", "vae.visualize", "vae.gaps", "vae.toy", LAUNCHER]
        keys += [f"benchmarks/{p.name}" for p in sorted((self.root / "benchmarks").glob("*.py"))]
        for target in self.scripts.values():
            key = self.module_key(target.partition(":")[0])
            if key and key != "vae.launch" and key not in keys:
                keys.append(key)
        return keys

    @functools.cached_property
    def every_flag(self) -> set[str]:
        return set().union(*(self.flags(key) for key in self.all_keys()))


_SHELL_WORDS = {"do", "then", "else", "elif", "time", "exec", "!", "{", "(", "sudo"}
_FLAG = re.compile(r"^--[a-zA-Z][\w-]*")


def _words(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        return list(lexer)
    except ValueError:  # unbalanced quotes: good enough
        return line.split()


def command_segments(line: str) -> list[list[str]]:
    """A shell line split into simple commands (at ;, &&, ||, |), shell keywords and VAR=value dropped."""
    segments, current = [], []
    for word in _words(line):
        if word and set(word) <= set(";&|()<>"):
            segments.append(current)
            current = []
        else:
            current.append(word)
    segments.append(current)
    result = []
    for words in segments:
        while words and (words[0] in _SHELL_WORDS or re.fullmatch(r"[A-Za-z_]\w*=.*", words[0])):
            words = words[1:]
        if words:
            result.append(words)
    return result


def flag_word(word: str) -> Optional[str]:
    """'--flag' of a word such as '--flag', '--flag=3' or '[--flag'; None for a shell variable or a non-flag."""
    word = word.strip("[](){},")
    if "$" in word or "{" in word:
        return None
    match = _FLAG.match(word)
    return match.group(0) if match else None


def attributed_flags(commands: Commands, words: list[str]) -> list[tuple[str, str]]:
    """(command key, flag) for the flags of one simple command; the launcher's own options are skipped."""
    key, start = commands.resolve(words)
    if key is None:
        return []
    if key == LAUNCHER:  # torchrun [its options] SCRIPT [the script's flags]
        rest = words[start:]
        for i, word in enumerate(rest):
            if word == "-m" and i + 1 < len(rest):  # torchrun -m MODULE
                key, args = commands.module_key(rest[i + 1]), rest[i + 2:]
            elif word.endswith(".py"):
                key, args = commands.script_key(word), rest[i + 1:]
            elif word in commands.scripts:  # torchrun --no-python fullcov-train
                key, args = commands.resolve([word])[0], rest[i + 1:]
            else:  # one of torchrun's options, or its value
                continue
            break
        else:
            return []
        if key is None or key == LAUNCHER:
            return []
        start, words = 0, args
    return [(key, f) for f in map(flag_word, words[start:]) if f]


@dataclass
class FlagReport:
    problems: list[str] = field(default_factory=list)
    attributed: int = 0
    loose: int = 0
    commands_seen: set[str] = field(default_factory=set)


def check_flags(files: list[Path], root: Path, commands: Commands) -> FlagReport:
    report = FlagReport()

    def check_line(where: str, line: str) -> set[str]:
        """Check the flags of each command on a shell line; return the flags it attributed."""
        done = set()
        for words in command_segments(line):
            for key, flag in attributed_flags(commands, words):
                report.attributed += 1
                report.commands_seen.add(key)
                done.add(flag)
                if flag not in commands.flags(key):
                    report.problems.append(f"{where}: {flag} is not a flag of {key}")
        return done

    def check_loose(where: str, text: str, done: set[str]) -> None:
        for word in re.findall(r"(?<![\w-])--[a-zA-Z][\w-]*", text):
            if word in done:
                continue
            report.loose += 1
            if word not in commands.every_flag:
                report.problems.append(f"{where}: {word} is not a flag of any command")

    for path in files:
        doc = parse_markdown(path)
        name = path.relative_to(root)
        for block in doc.blocks:
            if block.lang in ("python", "py", "text", "console-output", "json"):
                text = "\n".join(block.lines)
                check_loose(f"{name}:{block.start}", text, set())
                continue
            joined, first = "", None
            for offset, line in enumerate(block.lines):
                first = block.start + offset if first is None else first
                if line.rstrip().endswith("\\"):
                    joined += line.rstrip()[:-1] + " "
                    continue
                joined += line
                done = check_line(f"{name}:{first}", joined)
                check_loose(f"{name}:{first}", joined, done)  # a comment's flags: checked as prose
                joined, first = "", None
            if joined:
                check_loose(f"{name}:{first}", joined, check_line(f"{name}:{first}", joined))
        for number, line in doc.prose:
            done = set()
            for span in code_spans(line):
                done |= check_line(f"{name}:{number}", span)
            check_loose(f"{name}:{number}", line, done)
    return report


# ---------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def commands() -> Commands:
    return Commands(REPO)


def test_every_link_and_image_resolves():
    problems, checked = broken_links(doc_files(), REPO)
    assert not problems, "broken links:\n" + "\n".join(problems)
    assert checked >= 40, f"only {checked} relative links found: is the link parser still finding them?"
    images = sum(1 for path in doc_files() for _, target in links(parse_markdown(path))
                 if target.endswith(".png"))
    assert images >= 10, f"only {images} images found"


def test_every_flag_the_docs_name_exists(commands):
    report = check_flags(doc_files(), REPO, commands)
    assert not report.problems, "flags the commands do not have:\n" + "\n".join(report.problems)
    assert report.attributed >= 60, f"only {report.attributed} flags on command lines found"
    assert report.loose >= 60, f"only {report.loose} flags in prose found"
    for key in ("vae.train", "vae.evaluate", "vae.visualize", "vae.gaps", "vae.toy"):
        assert key in report.commands_seen, f"no command line of {key} found in the docs"
    assert any(key.startswith("benchmarks/") for key in report.commands_seen)


def test_the_commands_flags_are_read(commands):
    """The parsers are really read: each command has its known flags, the --no-X forms included."""
    assert {"--resume", "--amp", "--no-amp", "--preset", "--no-plots"} <= commands.flags("vae.train")
    assert {"--k", "--no-progress"} <= commands.flags("vae.evaluate")
    assert {"--families", "--plot"} <= commands.flags("vae.gaps")
    assert {"--dim", "--optimizer"} <= commands.flags("vae.toy")
    assert "--nproc-per-node" in commands.flags(LAUNCHER)
    for script, module in console_scripts().items():
        assert commands.resolve([script])[0] in (module.partition(":")[0], "vae.toy", LAUNCHER), script


def test_the_readme_keeps_the_ci_test_command():
    """.ci/run runs the second ```bash block of README.md: it must stay the install-and-test line."""
    n, command = 0, None
    for line in (REPO / "README.md").read_text(encoding="utf-8").splitlines():
        if line == "```bash":
            n += 1
        elif line != "```" and n == 2:
            command = line
            break
    assert command and "pip install" in command and "pytest" in command, command


def test_the_checks_fail_on_a_broken_link_and_a_fake_flag(tmp_path, commands):
    """The checkers are not vacuous: a broken link, a missing anchor, a link out of the repository and
    fake flags (on a command line, after torchrun, and in prose) are each reported."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "outside.md").write_text("# x\n")
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "page.md").write_text("# A page\n\n## Real heading: `--k`\n")
    (root / "README.md").write_text(
        "# t\n\n[ok](docs/page.md#real-heading---k) [bad](docs/nope.md) [anchor](docs/page.md#no-such)\n"
        "[out](../outside.md) ![img](docs/img/missing.png) [web](https://example.com/x)\n\n"
        "Use `--fake-prose-flag` or `--amp`.\n\n"
        "```bash\npython train.py --epochs 3 \\\n    --fake-train-flag\n"
        "torchrun --standalone --nproc-per-node 2 train.py --resume --fake-after-torchrun\n"
        "python -m vae.evaluate CKPT --k 10 --limit 5 --fake-eval-flag\n```\n")
    problems, checked = broken_links(doc_files(root), root)
    assert checked == 5
    assert any("docs/nope.md (no such file)" in p for p in problems)
    assert any("#no-such" in p for p in problems)
    assert any("outside the repository" in p for p in problems)
    assert any("missing.png" in p for p in problems)
    assert len(problems) == 4, problems

    report = check_flags(doc_files(root), root, commands)
    text = "\n".join(report.problems)
    assert "--fake-train-flag is not a flag of vae.train" in text
    assert "--fake-after-torchrun is not a flag of vae.train" in text
    assert "--fake-eval-flag is not a flag of vae.evaluate" in text
    assert "--fake-prose-flag is not a flag of any command" in text
    assert len(report.problems) == 4, text
    assert "--standalone" not in text and "--nproc-per-node" not in text  # torchrun's own: skipped


def test_github_slugs():
    assert github_slug("bf16 on the CPU: `--amp`") == "bf16-on-the-cpu---amp"
    assert github_slug("Where the bound loses: `python -m vae.gaps`") == "where-the-bound-loses-python--m-vaegaps"
    assert github_slug("The k = 50 IWAE") == "the-k--50-iwae"
    assert github_slug("What happens when things go wrong") == "what-happens-when-things-go-wrong"
    assert github_slug("The diagonal warm-up: why the full posterior needed it") == \
        "the-diagonal-warm-up-why-the-full-posterior-needed-it"

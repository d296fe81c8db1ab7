"""The table of every `CCT_*` setting, built from the code that reads them (`cct settings`,
docs/settings.md).

One pattern holds for every handler: its settings are a frozen dataclass whose `from_env` reads
`CCT_<HANDLER>_<NAME>` variables once (through `lambdas.common.settings`'s helpers, which
name the variable in every error) and whose docstring or comments say what each one means.
This module reads the source, not the environment: for each frozen dataclass under
`lambdas/` it finds the `CCT_*` names read inside it, the default written next to the read,
and the docstring or comment line that mentions the name. Variables shared by several
handlers are read by the helper functions of `lambdas/common/settings.py` (handler `shared`).

`reads_outside_settings` lists every read that is neither in such a dataclass nor in those
helpers, or in the per-run step inputs below; tests/test_settings_table.py fails on any.
"""

from __future__ import annotations

import ast
import functools
import io
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path

import click

LAMBDAS = Path(__file__).resolve().parents[1]
SHARED_MODULE = LAMBDAS / "common" / "settings.py"
NAME = re.compile(r"^CCT_[A-Z0-9_]*[A-Z0-9]$")

# Not settings but the input of one step run, written per run by the WorkflowTemplate
# (lambdas/steps/templates.py) and read by `cct step run --from-env`.
STEP_INPUTS = {
    "CCT_RUN_ID": "the workflow run's name",
    "CCT_PLAYBOOK": "the playbook being run",
    "CCT_WORKFLOW_UID": "the workflow's uid (whose admission verdict is the run's)",
    "CCT_WORKFLOW_STATUS": "the workflow's status (exit handler only)",
    "CCT_WORKFLOW_FAILURES": "the workflow's failures (exit handler only)",
}


@dataclass(frozen=True)
class Setting:
    name: str
    handler: str
    owner: str  # the dataclass (or shared helper) that reads it, module:qualname
    default: str
    meaning: str


@dataclass(frozen=True)
class Read:
    name: str
    path: Path
    line: int
    node: ast.Call | ast.Subscript
    owner: str | None  # enclosing frozen dataclass, or shared helper function
    field: str | None  # the dataclass field it is assigned to (`port=env_int(...)`)


@functools.cache
def _tree(source: str) -> ast.Module:
    return ast.parse(source)


def _reads_environment(node: ast.AST) -> bool:
    """`os.environ[...]`, `os.environ.get(...)`, `os.getenv(...)` or an `env_*` helper:
    what counts as a read anywhere (inside a settings dataclass, any call naming a `CCT_*`
    variable first does, such as its local `path("CCT_X", ...)` helpers)."""
    target = node.value if isinstance(node, ast.Subscript) else getattr(node, "func", None)
    text = ast.unparse(target) if target is not None else ""
    return text in {"os.environ", "os.environ.get", "os.getenv", "environ.get"} or text.split(".")[
        -1
    ] in {"env_str", "env_int", "env_float", "env_bool"}


def _name_of(node: ast.AST) -> str | None:
    """The `CCT_*` name a call or subscript reads, if it reads one by its literal name."""
    arg: ast.AST | None = None
    if isinstance(node, ast.Call) and node.args:
        arg = node.args[0]
    elif isinstance(node, ast.Subscript):
        arg = node.slice
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and NAME.match(arg.value):
        return arg.value
    return None


def _is_frozen_dataclass(cls: ast.ClassDef) -> bool:
    for deco in cls.decorator_list:
        if (
            isinstance(deco, ast.Call)
            and getattr(deco.func, "id", getattr(deco.func, "attr", None)) == "dataclass"
        ):
            return any(
                k.arg == "frozen" and getattr(k.value, "value", False) for k in deco.keywords
            )
    return False


def _reads(path: Path) -> list[Read]:
    tree = ast.parse(path.read_text(), str(path))
    module = path.relative_to(LAMBDAS.parent).with_suffix("").as_posix().replace("/", ".")
    found: list[Read] = []

    def visit(node: ast.AST, owner: str | None, field: str | None) -> None:
        if isinstance(node, ast.keyword) and node.arg:
            field = node.arg
        if (isinstance(node, ast.ClassDef) and _is_frozen_dataclass(node)) or (
            isinstance(node, ast.FunctionDef) and path == SHARED_MODULE and node.col_offset == 0
        ):
            owner = f"{module}:{node.name}"
        name = _name_of(node)
        if (
            name is not None
            and isinstance(node, ast.Call | ast.Subscript)
            and (owner is not None or _reads_environment(node))
        ):
            found.append(Read(name, path, node.lineno, node, owner, field))
        for child in ast.iter_child_nodes(node):
            visit(child, owner, field)

    visit(tree, None, None)
    return found


def all_reads() -> list[Read]:
    return [r for path in sorted(LAMBDAS.rglob("*.py")) for r in _reads(path)]


def dynamic_reads() -> list[tuple[Path, int]]:
    """Environment reads whose `CCT_*` name is built at run time (an f-string): the table
    cannot list those, so each variable must be read by its full name."""
    found: list[tuple[Path, int]] = []
    for path in sorted(LAMBDAS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            arg: ast.AST | None = None
            if isinstance(node, ast.Call) and node.args and _reads_environment(node):
                arg = node.args[0]
            elif isinstance(node, ast.Subscript) and _reads_environment(node):
                arg = node.slice
            if isinstance(arg, ast.JoinedStr) and "CCT_" in ast.unparse(arg):
                found.append((path, arg.lineno))
    return found


def reads_outside_settings() -> list[Read]:
    return [r for r in all_reads() if r.owner is None and r.name not in STEP_INPUTS]


def _default(read: Read, source: str) -> str:
    node = read.node
    if not isinstance(node, ast.Call):
        return "required"
    value: ast.AST | None = node.args[1] if len(node.args) > 1 else None
    for kw in node.keywords:
        if kw.arg == "default":
            value = kw.value
    func = ast.unparse(node.func)
    if value is None:
        return "required" if func.endswith("env_str") else "unset"
    if isinstance(value, ast.Attribute) and ast.unparse(value.value) == "cls":
        # `env_int("CCT_X", cls.port)`: the field's own default.
        return _field_default(source, read.owner, value.attr)
    if isinstance(value, ast.Name):
        # `env_str("CCT_X", PROTOCOL)`: the module constant's literal, not its name.
        value = _module_constant(source, value.id) or value
    text = ast.unparse(value)
    return "unset" if text in {"''", '""', "None"} else text


def _module_constant(source: str, name: str) -> ast.AST | None:
    for node in _tree(source).body:
        if (
            isinstance(node, ast.Assign)
            and [ast.unparse(t) for t in node.targets] == [name]
            and isinstance(node.value, ast.Constant)
        ):
            return node.value
    return None


def _field_default(source: str, owner: str | None, field: str) -> str:
    cls_name = (owner or "").split(":")[-1]
    for node in ast.walk(_tree(source)):
        if isinstance(node, ast.ClassDef) and node.name == cls_name:
            for item in node.body:
                if (
                    isinstance(item, ast.AnnAssign)
                    and ast.unparse(item.target) == field
                    and item.value is not None
                ):
                    return ast.unparse(item.value)
    return "see code"


def _docs(source: str) -> list[str]:
    """The source's docstring and comment text, one entry per paragraph (a docstring item
    with its indented continuation lines, or a block of consecutive comment lines)."""
    paragraphs: list[str] = []
    for node in ast.walk(_tree(source)):
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.Module):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                paragraphs += _items(doc)
    block: list[str] = []
    last_line = -2
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type != tokenize.COMMENT:
            continue
        if tok.start[0] != last_line + 1 and block:
            paragraphs.append(" ".join(block))
            block = []
        block.append(tok.string.lstrip("#").strip())
        last_line = tok.start[0]
    if block:
        paragraphs.append(" ".join(block))
    return paragraphs


def _items(doc: str) -> list[str]:
    items: list[list[str]] = []
    base: int | None = None
    for line in doc.splitlines():
        if not line.strip():
            base = None
            items.append([])
            continue
        indent = len(line) - len(line.lstrip())
        if base is None or indent <= base or not items:
            base = indent
            items.append([line.strip()])
        else:
            items[-1].append(line.strip())
    return [" ".join(i) for i in items if i]


def _meaning(read: Read, source: str, paragraphs: list[str]) -> str:
    """The docstring item or comment block naming the variable, else the comment block
    above the field the variable sets."""
    pattern = re.compile(rf"\b{re.escape(read.name)}\b")
    found = next((text for text in paragraphs if pattern.search(text)), None)
    if found is None and read.field is not None:
        found = _field_comment(source, read.owner, read.field)
    if found is None and read.field is not None:
        # A docstring item that documents the field: `name / other_name: meaning`.
        word = re.compile(rf"\b{re.escape(read.field)}\b")
        found = next((t for t in paragraphs if ":" in t and word.search(t.split(":")[0])), None)
    return re.sub(r"\s+", " ", found or "").replace("|", "\\|")


def _field_comment(source: str, owner: str | None, field: str) -> str | None:
    """The comment block above a field; a block above a group of fields covers each."""
    cls_name = (owner or "").split(":")[-1]
    lines = source.splitlines()
    for node in ast.walk(_tree(source)):
        if not (isinstance(node, ast.ClassDef) and node.name == cls_name):
            continue
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and ast.unparse(item.target) == field:
                n = item.lineno - 2
                while n >= 0 and re.match(r"^\s+\w+: [^#]+$", lines[n]):
                    n -= 1  # the other fields of the same group
                block: list[str] = []
                while n >= 0 and lines[n].strip().startswith("#"):
                    block.insert(0, lines[n].strip().lstrip("#").strip())
                    n -= 1
                return " ".join(block) or None
    return None


def _handler(owner: str) -> str:
    parts = owner.split(":", maxsplit=1)[0].split(".")
    return "shared" if parts[1] == "common" else parts[1]


def settings() -> list[Setting]:
    """One entry per variable and reader, sorted by handler then name."""
    sources: dict[Path, str] = {}
    docs: dict[Path, list[str]] = {}
    table: dict[tuple[str, str], Setting] = {}
    for read in all_reads():
        if read.owner is None:
            continue
        source = sources.setdefault(read.path, read.path.read_text())
        paragraphs = docs.setdefault(read.path, _docs(source))
        key = (_handler(read.owner), read.name)
        if key in table:
            continue
        table[key] = Setting(
            name=read.name,
            handler=key[0],
            owner=read.owner,
            default=_default(read, source),
            meaning=_meaning(read, source, paragraphs),
        )
    return sorted(table.values(), key=lambda s: (s.handler != "shared", s.handler, s.name))


def render_markdown() -> str:
    rows = settings()
    out = [
        "# Settings",
        "",
        "Every `CCT_*` environment variable CCT's handlers and commands read, generated from",
        "the code by `cct settings --markdown > docs/settings.md` (tests/test_settings_table.py",
        "fails when this page is stale or when a variable is read outside a settings",
        "dataclass). Each handler reads its own as a frozen dataclass, once at start; a bad",
        "value stops it with an error that names the variable. Handler names follow",
        "`CCT_<HANDLER>_<NAME>`; `shared` variables (PostgreSQL, VictoriaMetrics, Kafka,",
        "Alertmanager) are read by the helpers of `lambdas/common/settings.py` on behalf of",
        "every handler that needs them. Bind addresses default to 127.0.0.1 (the bundle sets",
        "0.0.0.0 in pods, `components/handlers.py`).",
        "",
        "| variable | handler | default | meaning (read by) |",
        "|---|---|---|---|",
    ]
    for s in rows:
        meaning = s.meaning or "(see the reader)"
        out.append(f"| `{s.name}` | {s.handler} | `{s.default}` | {meaning} (`{s.owner}`) |")
    out += [
        "",
        "Per-run inputs of `cct step run --from-env`, set by the WorkflowTemplate for each run",
        "(not settings): "
        + ", ".join(f"`{k}` ({v})" for k, v in sorted(STEP_INPUTS.items()))
        + "; also `CCT_PARAM_<NAME>` (one per playbook parameter) and `CCT_PREVIOUS_<STEP>`",
        "(an earlier step's output).",
        "",
    ]
    return "\n".join(out)


@click.command("settings")
@click.option("--markdown", is_flag=True, help="The docs/settings.md page instead of a table.")
@click.option("--handler", default=None, help="Only this handler's settings (or `shared`).")
def settings_cmd(markdown: bool, handler: str | None) -> None:
    """Every CCT_* setting the handlers and commands read: handler, default, meaning."""
    if markdown:
        click.echo(render_markdown(), nl=False)
        return
    for s in settings():
        if handler is None or s.handler == handler:
            click.echo(f"{s.name:44} {s.handler:10} {s.default:24} {s.meaning}")

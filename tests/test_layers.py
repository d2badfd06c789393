"""The seams of the package: imports point down, the core speaks its own terms, one owner per file format."""

import ast
import re
from pathlib import Path

import edgeanchor
from edgeanchor.cli import build_parser, flag_wording, parameter_flags

PACKAGE = Path(edgeanchor.__file__).parent
REPO = PACKAGE.parent


def modules(root: Path):
    for path in sorted(root.rglob("*.py")):
        yield path, ast.parse(path.read_text(), filename=str(path))


def imported_modules(path: Path, tree: ast.AST) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    if path.name == "__init__.py":
        package = ".".join(path.relative_to(REPO).parts[:-1])
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names.add(mod)
            names |= {f"{mod}.{a.name}" for a in node.names}
    return names


def test_imports_resolve_relative_names():
    tree = ast.parse("from ..cli.common import x\nfrom .. import cli\nimport edgeanchor.cli\n")
    names = imported_modules(PACKAGE / "benchmark" / "harness.py", tree)
    assert {"edgeanchor.cli.common", "edgeanchor.cli", "edgeanchor.cli.common.x"} <= names


def test_nothing_below_cli_imports_cli():
    offenders = []
    for path, tree in modules(PACKAGE):
        if "cli" in path.relative_to(PACKAGE).parts or path.name == "__main__.py":
            continue
        bad = sorted(n for n in imported_modules(path, tree) if n == "edgeanchor.cli" or n.startswith("edgeanchor.cli."))
        if bad:
            offenders.append(f"{path.relative_to(REPO)}: {bad}")
    assert not offenders, "imports back up into cli/: " + "; ".join(offenders)


def _error_strings(tree: ast.AST):
    """String pieces of every EdgeAnchorError(...) / CheckFailed(...) raised in a module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("EdgeAnchorError", "CheckFailed"):
            for arg in node.args:
                for sub in ast.walk(arg):
                    if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                        yield node.lineno, sub.value


def test_core_errors_name_parameters_not_flags():
    offenders = []
    for path, tree in modules(PACKAGE):
        if "cli" in path.relative_to(PACKAGE).parts:
            continue
        for line, text in _error_strings(tree):
            text = text.replace("'ray start --head'", "")  # a shell command the message quotes, not our flag
            if " --" in f" {text}" or "'--" in text:
                offenders.append(f"{path.relative_to(REPO)}:{line}: {text!r}")
    assert not offenders, "core error messages name CLI flags: " + "; ".join(offenders)


def test_cli_turns_marked_parameters_into_their_flags():
    msg = ("the accuracy floor 0.9 (`min_map` 0.9) is above the unpruned model's mAP 0.7; lower it, or use "
           "`max_drop`; `target_head_macs`; the output folder x exists; pass `overwrite` to replace it")
    assert flag_wording(msg) == (
        "the accuracy floor 0.9 (--min-map 0.9) is above the unpruned model's mAP 0.7; lower it, or use --max-drop; "
        "--target-head-macs; the output folder x exists; pass --overwrite to replace it")
    # only marked names: prose, stage names and file names stay as they are
    assert flag_wording("min_map, data, end_to_end and report_ann.json stay") == \
        "min_map, data, end_to_end and report_ann.json stay"
    # the flags come from the parser: a subcommand's own option (bench's --images, regress's --json-out)
    parser = build_parser()
    assert parameter_flags(parser, "bench")["images"] == "--images"
    assert flag_wording("pass `json_out`", parameter_flags(parser, "regress")) == "pass --json-out"
    assert flag_wording("`no_such_flag`", {}) == "--no-such-flag"


def test_every_marked_name_in_a_core_error_is_a_parameter():
    # a marked name must be a flag of some subcommand or a parameter of a public API function
    import inspect

    import edgeanchor as ea

    known = set(parameter_flags(build_parser()))
    for name in ea.__all__:
        obj = getattr(ea, name)
        if callable(obj) and not isinstance(obj, type):
            known |= set(inspect.signature(obj).parameters)
    known |= {"init", "reference", "variant"}  # train_checkpoint's init, regress's reference, evaluate's variant
    unknown = []
    for path, tree in modules(PACKAGE):
        for line, text in _error_strings(tree):
            for name in re.findall(r"`([a-z][a-z0-9_]*)`", text):
                if name not in known:
                    unknown.append(f"{path.relative_to(REPO)}:{line}: `{name}`")
    assert not unknown, "marked names that are no parameter: " + "; ".join(unknown)


EXPORT_FILE_NAMES = ("report.json", "report.md", "pruned.pt", "baseline.pt", "model_trt.onnx")


def _code_strings(tree: ast.AST):
    """String constants that are not docstrings."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_only_the_export_folder_knows_its_file_names():
    owner = PACKAGE / "exporting" / "folder.py"
    offenders = []
    for root in (PACKAGE, REPO / "benchmarks"):
        for path, tree in modules(root):
            if path == owner:
                continue
            for line, text in _code_strings(tree):
                hits = [n for n in EXPORT_FILE_NAMES if n in text]
                # help texts may describe the folder to the user; code may not build paths from the names
                if hits and "cli" not in path.relative_to(REPO).parts:
                    offenders.append(f"{path.relative_to(REPO)}:{line}: {text!r}")
    assert not offenders, "export file names outside exporting/folder.py: " + "; ".join(offenders)

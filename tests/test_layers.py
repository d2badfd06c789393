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


def _docstring_ids(tree: ast.AST) -> set[int]:
    """ids of the docstring constants of a module, its classes and functions."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return docstrings


def _code_strings(tree: ast.AST):
    """String constants that are not docstrings."""
    docstrings = _docstring_ids(tree)
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


# Every name of a file in the export folder (exporting/folder.py's layout): its fixed files, a graph's .onnx
# file, bench's results, the bundled annotations, TensorRT's engines, caches and build logs.
EXPORT_FILE_PATTERN = re.compile(
    r"(?<![\w.])(report\.json|report\.md|anchors\.json|pruned\.pt|baseline\.pt|search\.json|pareto\.png"
    r"|annotations\.json)|bench_\{\}|[\w}]\.onnx(?![\w.])|\.engine\b|[\w}]\.cache\b|\.calib\b|\.log$|build\.log"
)
# Not export files: scratch files in temporary folders, and ONNX's default operator domain.
NOT_EXPORT_FILES = {"graph.onnx", "pre.onnx", "model_nms_scores.onnx", "level{}_{}.onnx", "ai.onnx"}


def _code_texts(tree: ast.AST):
    """String constants and f-strings (their fields as ``{}``) that are not docstrings."""
    docstrings = _docstring_ids(tree)
    in_fstring = {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for part in node.values}
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            yield node.lineno, "".join(p.value if isinstance(p, ast.Constant) else "{}" for p in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings \
                and id(node) not in in_fstring:
            yield node.lineno, node.value


def test_the_export_file_check_finds_names_and_lets_prose_be():
    source = ('a = "report.json"\nb = f"{g}.onnx"\nc = f"bench_{r}.json"\nd = "timing.cache"\n'
              'e = f"{x}_{p}.engine"\nf = "x.with_suffix(\'.log\')"\ng = "torch.onnx.export"\n'
              'h = "point.anchors.json"')
    hits = [t for _, t in _code_texts(ast.parse(source)) if EXPORT_FILE_PATTERN.search(t)]
    assert hits == ["report.json", "{}.onnx", "bench_{}.json", "timing.cache", "{}_{}.engine"]


def test_nothing_outside_the_export_folder_names_an_export_file():
    # Messages and help texts may name files to the user (they contain spaces); code that builds a path may
    # not: every path in an export folder comes from ExportFolder (or folder.py's graph_file and friends).
    owner = PACKAGE / "exporting" / "folder.py"
    offenders = []
    for path, tree in modules(PACKAGE):
        if path == owner:
            continue
        for line, text in _code_texts(tree):
            if EXPORT_FILE_PATTERN.search(text) and not any(c.isspace() for c in text) \
                    and text not in NOT_EXPORT_FILES:
                offenders.append(f"{path.relative_to(REPO)}:{line}: {text!r}")
    assert not offenders, "export file names outside exporting/folder.py: " + "; ".join(offenders)


def test_the_runtimes_package_imports_no_runtime_and_no_torch():
    import subprocess
    import sys

    code = ("import sys, edgeanchor.runtimes as r; r.check_precision('onnxruntime', 'fp32'); "
            "print(sorted(m for m in ('torch', 'edgeanchor.runtimes.torch', 'tensorrt', 'openvino', 'cv2') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

"""The README's Python API examples, extracted and run exactly as written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def api_blocks() -> list[str]:
    """The ```python blocks of the README's "Python API" section, in order."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_section_has_both_examples():
    blocks = api_blocks()
    assert len(blocks) == 2
    assert 'ea.load("demo")' in blocks[0] and "ea.bench(" in blocks[0]
    assert "ea.wrap(model)" in blocks[1] and "torchvision.models.detection" in blocks[1]


@pytest.mark.slow
@pytest.mark.parametrize("index", [0, 1], ids=["demo-to-bench", "wrap-torchvision"])
def test_readme_example_runs(index, tmp_path, monkeypatch, capsys):
    import edgeanchor.datasets.demo_data as demo_data

    # The code runs exactly as written; only the environment is smaller: the demo data set is generated
    # with 60 images instead of 3000 (into this session's test cache), and files land in tmp_path.
    monkeypatch.setattr(demo_data, "DEMO_NUM_IMAGES", 60)
    monkeypatch.chdir(tmp_path)
    code = compile(api_blocks()[index], f"{README.name} Python API example {index + 1}", "exec")
    exec(code, {"__name__": "__main__"})
    out = capsys.readouterr().out
    if index == 0:
        assert "test mAP" in out and "pruned/baseline" in out and "end_to_end" in out
        assert (tmp_path / "pareto.png").is_file() and (tmp_path / "exports" / "api-demo" / "report.json").is_file()
    else:
        assert "anchors; head MACs" in out
        assert (tmp_path / "ssdlite_wide.pt").is_file() and (tmp_path / "ssdlite_wide.anchors.json").is_file()

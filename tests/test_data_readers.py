"""The data-set readers' small parsers: numbers, YOLO label lines, UTF-8 text, VOC XML (issue 24, part 3).

Property tests (hypothesis) check each parser against an independent reference (Python's float on the text
a number was printed as, the label arithmetic done by hand, Python's own strict UTF-8 decoder); the rest are
hand-worked cases. The end-to-end refusals are rows of tests/test_bad_input.py.
"""

from __future__ import annotations

import codecs
import math
import re
import struct
import zlib

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from edgeanchor.datasets import voc
from edgeanchor.datasets.imaging import load_image_array
from edgeanchor.datasets.text import decode_utf8, parse_decimal
from edgeanchor.datasets.yolo import image_size, parse_label_line, read_data_yaml
from edgeanchor.errors import EdgeAnchorError

finite = st.floats(allow_nan=False, allow_infinity=False)
PLAIN = set("0123456789+-.eE")


# ---- numbers ---------------------------------------------------------------------------------------------------
@given(finite)
def test_a_printed_float_reads_back_exactly(x):
    assert parse_decimal(repr(x)) == x  # repr is the shortest text that round-trips: '1e+300', '5e-324', '-0.0'


@given(st.integers(-(10**300), 10**300))
def test_a_printed_integer_reads_as_its_float(n):
    assert parse_decimal(str(n)) == float(n)


@given(st.text(max_size=30))
def test_any_text_is_a_finite_plain_decimal_or_refused(text):
    try:
        value = parse_decimal(text)
    except ValueError:
        return
    assert math.isfinite(value) and set(text) <= PLAIN and value == float(text)


@pytest.mark.parametrize("text", ["1_0", "inf", "-inf", "Infinity", "nan", "NaN", "1e309", "-1e400", "0x10", " 5",
                                  "5 ", "", "+", ".", "e5", "1e", "١٢", "½", "1.5.2"])
def test_numbers_only_python_reads_are_refused(text):
    with pytest.raises(ValueError):
        parse_decimal(text)


@pytest.mark.parametrize("text, value", [("48", 48.0), ("-3", -3.0), ("+0.25", 0.25), (".5", 0.5), ("5.", 5.0),
                                         ("1e-3", 0.001), ("2E2", 200.0), ("1e308", 1e308)])
def test_plain_decimals(text, value):
    assert parse_decimal(text) == value


# ---- YOLO label lines -------------------------------------------------------------------------------------------
unit = st.floats(0.0, 1.0)
size = st.floats(1e-6, 1.0)


@given(st.integers(1, 50).flatmap(lambda nc: st.tuples(st.just(nc), st.integers(0, nc - 1))),
       unit, unit, size, size)
def test_a_box_line_reads_as_its_corners(nc_cls, cx, cy, w, h):
    nc, cls = nc_cls
    parsed = parse_label_line(f"{cls} {cx!r} {cy!r} {w!r} {h!r}", nc)
    # the corners by hand: centre minus and plus half the size; w and h in (0, 1], so none is outside [0, 1]
    # unless the centre is within half a size of an edge
    corners = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    assert parsed == (cls, corners, sum(not 0.0 <= v <= 1.0 for v in (cx, cy, w, h)))


@given(unit, unit, st.floats(-1.0, 0.0), size)
def test_a_box_without_width_is_refused(cx, cy, w, h):
    with pytest.raises(ValueError, match="both must be positive"):
        parse_label_line(f"0 {cx!r} {cy!r} {w!r} {h!r}", 1)


@given(st.lists(st.tuples(unit, unit), min_size=3, max_size=8))
def test_a_polygon_reads_as_its_bounding_box(points):
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    assume(max(xs) > min(xs) and max(ys) > min(ys))
    line = "2 " + " ".join(f"{x!r} {y!r}" for x, y in points)
    assert parse_label_line(line, 3) == (2, (min(xs), min(ys), max(xs), max(ys)), 0)


label_words = st.one_of(st.sampled_from(["0", "1", "7", "-1", "0.5", "1.0", "-0.2", "0", "inf", "nan", "1e309",
                                         "1_0", "2e-1", "abc", "1.5"]),
                        finite.map(repr), st.text(max_size=6))


@given(st.lists(label_words, max_size=9).map(" ".join), st.integers(1, 5))
def test_any_line_is_a_valid_box_or_one_value_error(line, nc):
    try:
        parsed = parse_label_line(line, nc)
    except ValueError as exc:
        assert "\n" not in str(exc)
        return
    if parsed is None:
        assert not line.split()
        return
    cls, (x1, y1, x2, y2), outside = parsed
    assert 0 <= cls < nc and all(math.isfinite(v) for v in (x1, y1, x2, y2)) and x2 > x1 and y2 > y1
    assert 0 <= outside <= len(line.split()) - 1


@pytest.mark.parametrize("line, message", [
    ("0 0.5 0.5 -0.2 0.2", "width -0.2 and height 0.2; both must be positive"),
    ("0 0.5 0.5 0.2 0", "height 0; both must be positive"),
    ("inf 0.5 0.5 0.2 0.2", "the class id 'inf' is not a finite decimal number"),
    ("1e309 0.5 0.5 0.2 0.2", "the class id '1e309' is not a finite decimal number"),
    ("nan 0.5 0.5 0.2 0.2", "the class id 'nan'"),
    ("0 inf 0.5 inf 0.2", "value 2 'inf'"),
    ("0 0.1 0.1 0.1 0.1 0.1 0.1", "span no width"),  # three equal points
])
def test_bad_label_lines(line, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_label_line(line, 5)


# ---- UTF-8 text ---------------------------------------------------------------------------------------------------
@given(st.text())
def test_utf8_text_reads_back(text):
    assume(not text.startswith("\ufeff"))  # a leading byte-order mark is dropped, as Windows editors write one
    assert decode_utf8(text.encode(), "f.txt") == text
    assert decode_utf8(codecs.BOM_UTF8 + text.encode(), "f.txt") == text


@given(st.binary(max_size=40), st.booleans())
def test_bytes_decode_as_python_does_or_name_the_first_bad_byte(raw, bom):
    raw = (codecs.BOM_UTF8 if bom else b"") + raw
    body = raw[3:] if raw.startswith(codecs.BOM_UTF8) else raw
    try:
        expected = body.decode("utf-8")
    except UnicodeDecodeError:
        expected = None
    if expected is not None:
        assert decode_utf8(raw, "f.txt") == expected
        return
    with pytest.raises(EdgeAnchorError) as info:
        decode_utf8(raw, "f.txt")
    found = re.fullmatch(r"f\.txt:(\d+): not UTF-8 text \(byte 0x([0-9a-f]{2}) at byte offset (\d+)\); save the file "
                         r"as UTF-8", str(info.value))
    assert found, str(info.value)
    line, byte, offset = int(found[1]), int(found[2], 16), int(found[3])
    start = len(raw) - len(body)
    body[: offset - start].decode("utf-8")  # everything before the offset is good UTF-8
    assert raw[offset] == byte and line == raw[:offset].count(b"\n") + 1


def test_bad_byte_offset_by_hand():
    # 'pole\n' is 5 bytes, 'pl' 2 more: the 0xff is byte 7, on line 2 (the BOM's 3 bytes count too)
    with pytest.raises(EdgeAnchorError, match=re.escape("c.txt:2: not UTF-8 text (byte 0xff at byte offset 10)")):
        decode_utf8(codecs.BOM_UTF8 + b"pole\npl\xffank\n", "c.txt")


# ---- VOC XML ------------------------------------------------------------------------------------------------------
def xml_with_box(box: tuple[str, str, str, str]) -> str:
    fields = "".join(f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
    return f"<annotation>\n<object>\n<name>coin</name>\n<bndbox>\n{fields}\n</bndbox>\n</object>\n</annotation>\n"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(finite, min_size=4, max_size=4))
def test_voc_coordinates_read_back_exactly(tmp_path, values):
    x1, x2 = sorted(values[:2])
    y1, y2 = sorted(values[2:])
    path = tmp_path / "a.xml"
    path.write_text(xml_with_box((repr(x1), repr(y1), repr(x2), repr(y2))))
    assert voc.parse_voc_xml(path).objects[0].box == (x1, y1, x2, y2)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=12))
def test_any_voc_coordinate_text_is_a_finite_number_or_one_line(tmp_path, text):
    escaped = text.replace("&", "&amp;").replace("<", "&lt;")
    path = tmp_path / "a.xml"
    path.write_text(xml_with_box((escaped, "1", "50", "60")))
    try:
        box = voc.parse_voc_xml(path).objects[0].box
    except EdgeAnchorError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(f"{path}:")
        return
    assert math.isfinite(box[0]) and box[0] == float(text.strip()) and set(text.strip()) <= PLAIN


def test_text_in_many_chunks_is_joined_to_the_right_value(tmp_path, monkeypatch):
    # 200,000 text chunks (split by empty elements) in one <name>, just under the 1 MiB cap: the node joins its
    # chunks once (the old parser did `text += chunk` per chunk)
    chunks = []
    data = voc._Target.data
    monkeypatch.setattr(voc._Target, "data", lambda self, text: (chunks.append(len(text)), data(self, text)))
    path = tmp_path / "a.xml"
    path.write_text(f"<annotation><object><name>k{'i<b/>' * 200_000}</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
                    "<xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>")
    assert path.stat().st_size <= voc.MAX_XML_BYTES
    assert voc.parse_voc_xml(path).objects[0].name == "k" + "i" * 200_000
    assert len(chunks) >= 200_000


def test_the_cap_is_on_bytes_read(tmp_path):
    path = tmp_path / "a.xml"
    path.write_bytes(b"<annotation>" + b" " * (voc.MAX_XML_BYTES - 26) + b"</annotation>")  # 12 + 13 bytes of tags
    assert path.stat().st_size == voc.MAX_XML_BYTES - 1 and voc.parse_voc_xml(path).objects == ()
    path.write_bytes(b"<annotation>" + b" " * (voc.MAX_XML_BYTES - 24) + b"</annotation>")
    with pytest.raises(EdgeAnchorError, match="larger than 1 MiB"):
        voc.parse_voc_xml(path)


def test_labelimg_xml_only_in_sub_folders_is_voc_data(tmp_path):
    sub = tmp_path / "shots" / "day1"
    sub.mkdir(parents=True)
    Image.new("RGB", (40, 30)).save(sub / "a.jpg")
    (sub / "a.xml").write_text(xml_with_box(("2", "3", "10", "20")))
    assert voc.is_voc_data(tmp_path / "shots")
    [(image, record)] = voc.folder_records(tmp_path / "shots")
    assert image == sub / "a.jpg" and record is not None and record.objects[0].box == (2.0, 3.0, 10.0, 20.0)


def test_devkit_folders_may_be_symlinks(tmp_path):
    # the layout's own folders may live elsewhere (a shared image pool); the ids' files resolve inside them
    root, pool = tmp_path / "VOC", tmp_path / "pool"
    for folder in (root / "Annotations", root / "ImageSets" / "Main", pool):
        folder.mkdir(parents=True)
    (root / "JPEGImages").symlink_to(pool)
    Image.new("RGB", (40, 30)).save(pool / "000001.jpg")
    (root / "Annotations" / "000001.xml").write_text(xml_with_box(("2", "3", "10", "20")))
    (root / "ImageSets" / "Main" / "val.txt").write_text("000001\n")
    [(image, record)] = voc.devkit_records(root, "val")
    assert image == root / "JPEGImages" / "000001.jpg" and record is not None


@pytest.mark.parametrize("line", ["../x", "a/b", "..", "sub\\x"])
def test_split_ids_are_plain_names(tmp_path, line):
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Main" / "val.txt").write_text(f"000001\n{line}\n")
    with pytest.raises(EdgeAnchorError, match=r"val\.txt:2: image id .* is not a plain file name"):
        voc.split_ids(tmp_path, "val")


# ---- data.yaml ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, message", [
    ("val: images/val\nnames: &n [a, b]\ntest: *n\n", "data.yaml:3: the YAML alias *n is not allowed"),
    ("base: &b {val: images/val}\n<<: *b\nnames: [a]\n", "data.yaml:2: the YAML alias *b"),
    ("val: images/val\nnc: 100001\n", "nc is 100001; it must be a whole number of classes from 1 to 100,000"),
    ("val: images/val\nnc: true\n", "nc is True"),
    ("val: images/val\nnc: 0\n", "nc is 0"),
    ("path: [a]\nval: images/val\nnames: [a]\n", "'path' is ['a']"),
    ("val: images/val\nnames: [a, [b, c]]\n", "the class name ['b', 'c'] is not a name"),
    ("val: images/val\nnames:\n  " + "[" * 5000 + "]" * 5000 + "\n", "data.yaml:3: the YAML nests deeper than 50"),
    ("names: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n", "data.yaml:1: the YAML nests deeper than 50"),
])
def test_bad_data_yaml(tmp_path, text, message):
    (tmp_path / "data.yaml").write_text(text)
    with pytest.raises(EdgeAnchorError, match=re.escape(message)):
        read_data_yaml(tmp_path / "data.yaml")


def test_data_yaml_at_the_class_bound_reads(tmp_path):
    (tmp_path / "data.yaml").write_text("val: images/val\nnc: 100000\n")
    spec = read_data_yaml(tmp_path / "data.yaml")
    assert spec.num_classes == 100_000 and spec.names[-1] == "99999"


# ---- images -------------------------------------------------------------------------------------------------------
def png_header(width: int, height: int) -> bytes:
    """A PNG of a signature, an IHDR declaring (width, height) 8-bit grey, and IEND: no pixel data at all."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + chunk(
        b"IEND", b"")


@pytest.mark.parametrize("read", [image_size, lambda p: load_image_array(p, (32, 32))])
def test_an_image_header_past_pillows_limit_is_one_line(tmp_path, read):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header(100_000, 100_000))  # 10**10 pixels declared in 57 bytes
    with pytest.raises(EdgeAnchorError, match=r"cannot read image .*bomb\.png \(Image size \(10000000000 pixels\)"):
        read(path)

"""The judgement of a folder or an image table before the run: everything found without
decoding a file, on real files and a real local HTTP server, reported at once in one
DataError whose report holds every finding."""

from __future__ import annotations

import io
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kedro_torch import errors
from kedro_torch.pytorch import images
from kedro_torch.pytorch.config import (
    DataConfig,
    ManifestConfig,
    ParameterError,
    SplitConfig,
)
from kedro_torch.pytorch.data import (
    HEAD_BYTES,
    PROBLEMS_SHOWN,
    DataError,
    ImageTable,
    check_header,
    check_headers,
    judge_folder,
    judge_table,
    list_folder,
    manifest_from_listing,
)
from kedro_torch.pytorch.images import READ_TIMEOUT_VARIABLE
from tests.faults.hanging import files_over_http, silent_host
from tests.image_files import (
    image_folder,
    write_empty_file,
    write_image,
    write_text_as_jpeg,
    write_truncated_jpeg,
)
from tests.servers import free_port

CONFIG = DataConfig()  # split 0.7 / 0.15 / 0.15: 7 images a class at least; 1% unreadable


def table_of(rows: list[tuple[str | None, str | None]], folder) -> ImageTable:
    return ImageTable(pd.DataFrame(rows, columns=["path", "label"], dtype=object), str(folder))


def good_rows(folder, per_class: int = 10, classes: str = "ab") -> list[tuple[str, str]]:
    image_folder(folder, dict.fromkeys(classes, per_class))
    return [(f"{label}/{i:04d}.png", label) for label in classes for i in range(per_class)]


@pytest.fixture
def server():
    """A local HTTP server: /digit.png an image, /notes.png text, /big.jpg a JPEG whose
    header ends past the first HEAD_BYTES (a large colour profile comes first),
    /broken.png a server error, 404 elsewhere."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8), 128, dtype=np.uint8)).save(buffer, format="PNG")
    big = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(
        big, format="JPEG", icc_profile=bytes(3 * HEAD_BYTES))
    files = {"/digit.png": buffer.getvalue(), "/notes.png": b"not an image\n",
             "/big.jpg": big.getvalue()}
    with files_over_http(files, {"/broken.png": 500}) as url:
        yield url


# --- one file's header -------------------------------------------------------------------


def test_the_header_check_tells_what_a_file_is(tmp_path):
    assert check_header(str(write_image(tmp_path / "a.png", 0))).reason is None
    missing = check_header(str(tmp_path / "gone.png"))
    assert (missing.reason, missing.missing) == ("no file at this path", True)
    text = check_header(str(write_text_as_jpeg(tmp_path / "note.jpg")))
    assert (text.reason, text.missing) == ("not an image: PIL cannot identify it", False)
    assert check_header(str(write_empty_file(tmp_path / "e.png"))).reason == \
        "empty file (0 bytes)"
    assert check_header(str(tmp_path)).reason.startswith("cannot read: ")  # a folder


def test_a_truncated_image_passes_the_header_check_and_is_left_to_the_file_check(tmp_path):
    """Its header is whole: only decoding, in the transform stage, finds the cut."""
    assert check_header(str(write_truncated_jpeg(tmp_path / "cut.jpg"))).reason is None


def test_over_http_the_header_is_read_and_a_404_is_a_missing_file(server):
    assert check_header(f"{server}/digit.png").reason is None
    assert check_header(f"{server}/notes.png").reason == "not an image: PIL cannot identify it"
    assert check_header(f"{server}/gone.png").missing
    # Its header does not fit in the first bytes read: the whole file is read, and passes.
    assert check_header(f"{server}/big.jpg").reason is None


def test_a_server_error_is_a_read_error_before_the_run_and_in_the_file_check(server):
    url = f"{server}/broken.png"
    assert check_header(url).reason.startswith(f"cannot read: {url}: 500")
    checked = images.check_file(url, 8, 1, keep_pixels=False)
    assert checked.reason.startswith(f"cannot read: {url}: 500") and not checked.missing


def test_a_refused_connection_is_a_read_error_naming_the_address():
    port = free_port()
    check = check_header(f"http://127.0.0.1:{port}/a.png")
    assert not check.missing
    assert check.reason.startswith(f"cannot read: Cannot connect to host 127.0.0.1:{port}")


def test_a_silent_host_costs_one_bound_and_each_of_its_rows_names_it(monkeypatch):
    monkeypatch.setenv(READ_TIMEOUT_VARIABLE, "1")
    with silent_host() as host:
        urls = [f"{host}/{i}.png" for i in range(40)]  # more than are read at once
        started = time.monotonic()
        checks = check_headers(urls)
        elapsed = time.monotonic() - started
    assert elapsed < 1 + 5
    assert checks[0].reason == f"cannot read: {host} did not send {urls[0]} within 1 s " \
                               f"({READ_TIMEOUT_VARIABLE})"
    assert all(host in check.reason and not check.missing for check in checks)
    assert any("not asked" in check.reason for check in checks)


def test_a_bad_read_bound_is_refused_not_given_as_each_rows_reason(monkeypatch):
    monkeypatch.setenv(READ_TIMEOUT_VARIABLE, "abc")
    with pytest.raises(ParameterError, match=READ_TIMEOUT_VARIABLE):
        check_headers([f"http://127.0.0.1:{free_port()}/a.png"])


# --- a table --------------------------------------------------------------------------------


def test_every_bad_row_of_a_table_is_named_in_one_refusal(tmp_path):
    """The issue's table: a missing file, a non-image file, an unreachable URL and an
    empty label, among good rows, refused at once; and a row without a path."""
    rows = good_rows(tmp_path / "images")
    (tmp_path / "images" / "notes.txt").write_text("a note\n")
    port = free_port()
    rows[3:3] = [("gone.png", "a")]  # row 4
    rows += [("notes.txt", "b"),  # row 22
             (f"http://127.0.0.1:{port}/c.png", "a"),  # row 23
             ("a/0000.png", " "),  # row 24
             (None, "b")]  # row 25
    with pytest.raises(DataError) as refusal:
        judge_table(table_of(rows, tmp_path / "images"), CONFIG, "labels.csv")
    message = str(refusal.value)
    lines = message.splitlines()
    assert lines[0] == "the image table 'labels.csv' cannot be used: 5 of 25 rows have problems:"
    assert lines[1:5] == [
        "- row 4 'gone.png': no file at this path",
        "- row 22 'notes.txt': not an image: PIL cannot identify it",
        f"- row 23 'http://127.0.0.1:{port}/c.png': cannot read: Cannot connect to host "
        f"127.0.0.1:{port}" + lines[3].split(f"127.0.0.1:{port}", 2)[-1],
        "- row 24 'a/0000.png': no label in column 'label' (data.manifest.label_column)",
    ]
    assert lines[5] == "- row 25: no path in column 'path' (data.manifest.path_column)"
    assert "data.max_bad_fraction = 0.01 (here 2 of 25, 8.0%)" in lines[6]
    report = refusal.value.report
    assert [(row["row"], row["stops_the_run"]) for row in report["bad_files"]] == [
        (4, True), (22, False), (23, False), (24, True), (25, True)]
    assert report["bad_files"][0]["path"] == str(tmp_path / "images" / "gone.png")
    assert report["images_per_class"] == {"a": 10, "b": 10}
    assert report["problems"] == [line.removeprefix("- ") for line in lines[1:6]]


def test_a_refusal_prints_as_one_block_without_a_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(errors.TRACEBACK_SWITCH, raising=False)
    rows = [*good_rows(tmp_path), ("gone.png", "a")]
    with pytest.raises(DataError) as refusal:
        judge_table(table_of(rows, tmp_path), CONFIG, "labels.csv")
    assert errors.report(refusal.value) == errors.FAILED == 1
    printed = capsys.readouterr().err
    assert printed.startswith("Error: the image table 'labels.csv' cannot be used")
    assert "- row 21 'gone.png': no file at this path" in printed
    assert "Traceback" not in printed


def test_a_few_unreadable_files_are_left_for_the_file_check_to_set_aside(tmp_path, caplog):
    """Under data.max_bad_fraction the run goes on, as it always did."""
    rows = good_rows(tmp_path, per_class=100)
    write_text_as_jpeg(tmp_path / "a" / "note.jpg")
    rows.append(("a/note.jpg", "a"))
    with caplog.at_level("INFO"):
        judge_table(table_of(rows, tmp_path), CONFIG, "labels.csv")
    assert "1 of 201 rows cannot be read; the file check will set them aside" in caplog.text


def test_one_missing_file_among_many_still_stops_the_run(tmp_path):
    """As the file check does: a table that lists a file that is not there is refused,
    whatever data.max_bad_fraction says."""
    rows = [*good_rows(tmp_path, per_class=100), ("a/gone.png", "a")]
    with pytest.raises(DataError, match=r"row 201 'a/gone\.png': no file at this path"):
        judge_table(table_of(rows, tmp_path), CONFIG, "labels.csv")


def test_classes_too_small_are_named_with_the_bad_rows(tmp_path):
    """A class whose only file is not an image has no readable image left."""
    rows = good_rows(tmp_path)
    write_image(tmp_path / "c" / "one.png", 99)
    write_text_as_jpeg(tmp_path / "d" / "note.jpg")
    rows += [("c/one.png", "c"), ("d/note.jpg", "d")]
    with pytest.raises(DataError) as refusal:
        judge_table(table_of(rows, tmp_path), CONFIG, "labels.csv")
    lines = str(refusal.value).splitlines()
    assert lines[0] == (
        "the image table 'labels.csv' cannot be used: 1 of 22 rows have problems; 2 classes "
        "have too few images for data.split (at least 7 each for train 0.7, val 0.15, test "
        "0.15):")
    assert lines[1:4] == ["- row 22 'd/note.jpg': not an image: PIL cannot identify it",
                          "- class 'c': 1 readable image", "- class 'd': 0 readable images"]
    assert refusal.value.report["classes_too_small"] == {"c": 1, "d": 0}


def test_a_long_list_is_cut_in_the_message_and_whole_in_the_report(tmp_path):
    rows = [*good_rows(tmp_path), *((f"gone{i}.png", "a") for i in range(30))]
    with pytest.raises(DataError) as refusal:
        judge_table(table_of(rows, tmp_path), CONFIG, "labels.csv")
    lines = str(refusal.value).splitlines()
    assert len(lines) == 1 + PROBLEMS_SHOWN + 3  # the head, the problems, the rule, the advice
    assert lines[PROBLEMS_SHOWN + 1] == f"- and {30 - PROBLEMS_SHOWN} more"
    assert len(refusal.value.report["bad_files"]) == 30


def test_the_table_names_its_missing_columns_and_group_column(tmp_path):
    rows = good_rows(tmp_path)
    config = DataConfig(manifest=ManifestConfig(label_column="class"))
    with pytest.raises(DataError, match=r"data\.manifest\.label_column: .*no column 'class'"):
        judge_table(table_of(rows, tmp_path), config)
    grouped = DataConfig(split=SplitConfig(group_column="patient"))
    with pytest.raises(DataError, match=r"data\.split\.group_column: the table has no column"):
        judge_table(table_of(rows, tmp_path), grouped)


def test_a_good_table_passes(tmp_path):
    judge_table(table_of(good_rows(tmp_path), tmp_path), CONFIG)


# --- a folder ---------------------------------------------------------------------------------


def test_an_empty_folder_is_said_to_be_empty(tmp_path):
    listing = list_folder(str(tmp_path))
    for judged in (lambda: judge_folder(listing, CONFIG), lambda: manifest_from_listing(listing)):
        with pytest.raises(DataError) as refusal:
            judged()
        assert str(refusal.value).startswith(
            f"the image folder {str(tmp_path)!r} is empty: it holds no image files "
            "(extensions .bmp .gif .jpeg .jpg .png .tif .tiff .webp)")


def test_a_folder_of_other_files_says_what_it_holds(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"holds no image files .*: no images found, only "
                                        r"1 not an image"):
        judge_folder(list_folder(str(tmp_path)), CONFIG)


def test_two_classes_of_one_image_each_are_refused_before_any_file_is_read(tmp_path):
    image_folder(tmp_path, {"a": 1, "b": 1})
    (tmp_path / "c").mkdir()
    with pytest.raises(DataError) as refusal:
        judge_folder(list_folder(str(tmp_path)), CONFIG)
    assert str(refusal.value).splitlines()[:4] == [
        f"the image folder {str(tmp_path)!r} cannot be used: 2 classes have too few images "
        "for data.split (at least 7 each for train 0.7, val 0.15, test 0.15); 1 class folder "
        "without any image (extensions .bmp .gif .jpeg .jpg .png .tif .tiff .webp):",
        "- class 'a': 1 image", "- class 'b': 1 image", "- class folder 'c': no image in it",
    ]
    report = refusal.value.report
    assert report["classes_too_small"] == {"a": 1, "b": 1}
    assert report["class_folders_without_images"] == ["c"]


def test_a_folder_that_can_be_split_passes(tmp_path):
    image_folder(tmp_path, {"a": 7, "b": 7})
    judge_folder(list_folder(str(tmp_path)), CONFIG)

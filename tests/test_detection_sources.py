"""The detection sources: a COCO file, a PASCAL VOC folder and a table of boxes become
the same manifest, one row per image with its boxes as corners in its own pixels, and
what they cannot use is refused before the run, named."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from PIL import Image

from kedro_torch.datasets import ImageFolderDataset, ImageTableDataset
from kedro_torch.pytorch import data, sources
from kedro_torch.pytorch.config import DataConfig, DetectionConfig, ParameterError
from kedro_torch.pytorch.sources.coco import category_ids, read_coco

CATEGORIES = [{"id": 3, "name": "dog"}, {"id": 1, "name": "cat"}]


def write_image(path, size=(20, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 120, 30)).save(path)
    return path


def listing(root):
    return ImageFolderDataset(path=str(root)).load()


def config(source, classes=("cat", "dog"), annotations="annotations.json") -> DataConfig:
    return DataConfig(task="object_detection", source=source, detection=DetectionConfig(
        classes=list(classes), annotations=annotations))


def boxes(manifest, relative_path):
    row = manifest.set_index("relative_path").loc[relative_path]
    return json.loads(row["boxes"])


# --- COCO -----------------------------------------------------------------------------


def write_coco(root, coco=None, name="annotations.json"):
    """Two images in images/ (one named bare by the file), one the file names but the
    folder lacks, one the file does not name."""
    for image in ("images/0001.png", "images/0002.png", "extra/unnamed.png"):
        write_image(root / image)
    coco = coco or {
        "images": [{"id": 10, "file_name": "0001.png"},
                   {"id": 11, "file_name": "images/0002.png"},
                   {"id": 12, "file_name": "gone/0003.png"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 3, "bbox": [2, 3, 5, 4], "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 1, "bbox": [0.5, 1.25, 10, 8.5]},
            {"id": 3, "image_id": 11, "category_id": 7, "bbox": [1, 1, 2, 2]},
            {"id": 4, "image_id": 11, "category_id": 1, "bbox": [0, 0, 20, 16], "iscrowd": 1},
        ],
        "categories": CATEGORIES,
    }
    (root / name).write_text(json.dumps(coco) if isinstance(coco, dict) else coco)
    return root


def test_coco_boxes_become_corners_labelled_by_category_name(tmp_path):
    root = write_coco(tmp_path / "coco")
    manifest = sources.get("coco").ingest(listing(root), config("coco"))
    assert list(manifest.columns) == ["path", "relative_path", "boxes", "image_id"]
    assert manifest["relative_path"].tolist() == [
        "gone/0003.png", "images/0001.png", "images/0002.png"]
    assert boxes(manifest, "images/0001.png") == [["dog", 2, 3, 7, 7],
                                                  ["cat", 0.5, 1.25, 10.5, 9.75]]
    # a category no category list has is its id; the crowd box is skipped
    assert boxes(manifest, "images/0002.png") == [["7", 1, 1, 3, 3]]
    assert manifest.set_index("relative_path")["image_id"].to_dict() == {
        "gone/0003.png": 12, "images/0001.png": 10, "images/0002.png": 11}
    paths = manifest.set_index("relative_path")["path"]
    assert paths["images/0001.png"] == str(root / "images" / "0001.png")
    # not in the folder: kept where the file says, for the file check to report
    assert paths["gone/0003.png"] == str(root / "gone" / "0003.png")
    assert boxes(manifest, "gone/0003.png") == []


def test_a_bare_coco_name_matching_two_files_is_refused_naming_both(tmp_path):
    root = write_coco(tmp_path / "coco")
    write_image(root / "other" / "0001.png")
    with pytest.raises(data.DataError, match=r"'0001.png' ends both 'images/0001.png' and "
                                             r"'other/0001.png'"):
        sources.get("coco").ingest(listing(root), config("coco"))


def test_the_coco_file_is_judged_before_the_run(tmp_path):
    root = write_coco(tmp_path / "coco")
    source = sources.get("coco")
    source.judge(listing(root), config("coco"), None)
    with pytest.raises(data.DataError) as refused:
        source.judge(listing(root), config("coco", annotations="labels/coco.json"), None)
    assert all(word in str(refused.value) for word in
               ("'labels/coco.json'", str(root), "data.detection.annotations"))
    (root / "annotations.json").write_text("{not json")
    with pytest.raises(data.DataError, match=r"'annotations\.json' in .* is not JSON"):
        source.judge(listing(root), config("coco"), None)
    (root / "annotations.json").write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(data.DataError, match="has no 'categories' list"):
        source.judge(listing(root), config("coco"), None)


def test_coco_entries_without_what_a_box_needs_are_refused_each_named(tmp_path):
    root = write_coco(tmp_path / "coco", {
        "images": [{"id": 1, "file_name": "images/0001.png"}, {"id": 1, "file_name": "b.png"}],
        "annotations": [{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3]},
                        {"image_id": 9, "category_id": 1, "bbox": [1, 2, 3, 4]}],
        "categories": CATEGORIES})
    with pytest.raises(data.DataError) as refused:
        read_coco(listing(root), "annotations.json")
    message = str(refused.value)
    assert "image id 1 is given to 2 images" in message
    assert "annotations[0] has bbox [1, 2, 3]" in message
    assert "annotations[1] names image id 9" in message


def test_a_coco_run_without_classes_is_told_the_categories_in_id_order(tmp_path):
    root = write_coco(tmp_path / "coco")
    with pytest.raises(ParameterError, match=r'data.detection.classes is required.*'
                                             r'\["cat", "dog"\]'):
        sources.get("coco").judge(listing(root), config("coco", classes=()), None)
    with pytest.raises(data.DataError, match="'bird', which no category"):
        sources.get("coco").judge(listing(root), config("coco", ("cat", "bird")), None)


def test_classes_map_to_their_coco_category_ids(tmp_path):
    coco = read_coco(listing(write_coco(tmp_path / "coco")), "annotations.json")
    assert category_ids(coco, ["dog", "cat"]) == [3, 1]
    assert sources.get("coco").describe(config("coco")) == {
        "type": "coco", "annotations": "annotations.json"}


# --- PASCAL VOC -----------------------------------------------------------------------


def voc_xml(filename, *objects):
    parts = "".join(
        f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>"
        f"<xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox>"
        f"<part><name>hand</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax>"
        f"<ymax>2</ymax></bndbox></part></object>"
        for name, difficult, (x0, y0, x1, y1) in objects)
    return (f"<annotation><folder>VOC2012</folder><filename>{filename}</filename>"
            f"<size><width>20</width><height>16</height><depth>3</depth></size>{parts}"
            "</annotation>")


def write_voc(root):
    for name in ("2008_000001", "2008_000002", "2008_000009"):
        write_image(root / "JPEGImages" / f"{name}.jpg")
    (root / "Annotations").mkdir(parents=True)
    (root / "Annotations" / "2008_000001.xml").write_text(voc_xml(
        "2008_000001.jpg", ("dog", 0, (1, 1, 20, 16)), ("cat", 1, (5, 6, 7.5, 9))))
    (root / "Annotations" / "2008_000002.xml").write_text(voc_xml("2008_000002.jpg"))
    (root / "Annotations" / "2008_000003.xml").write_text(voc_xml(
        "2008_000003.jpg", ("\n\t\tcat ", 0, (2, 2, 4, 4))))
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("2008_000001\n")
    return root


def test_voc_boxes_become_corners_from_pixels_numbered_from_one(tmp_path):
    root = write_voc(tmp_path / "VOC2012")
    manifest = sources.get("voc").ingest(listing(root), config("voc"))
    assert list(manifest.columns) == ["path", "relative_path", "boxes"]
    assert manifest["relative_path"].tolist() == [
        "JPEGImages/2008_000001.jpg", "JPEGImages/2008_000002.jpg",
        "JPEGImages/2008_000003.jpg"]
    # the difficult cat is kept; the person layout's parts are not objects
    assert boxes(manifest, "JPEGImages/2008_000001.jpg") == [["dog", 0, 0, 20, 16],
                                                             ["cat", 4, 5, 7.5, 9]]
    assert boxes(manifest, "JPEGImages/2008_000002.jpg") == []
    assert boxes(manifest, "JPEGImages/2008_000003.jpg") == [["cat", 1, 1, 4, 4]]
    paths = manifest.set_index("relative_path")["path"]
    assert paths["JPEGImages/2008_000001.jpg"] == str(root / "JPEGImages" / "2008_000001.jpg")
    assert paths["JPEGImages/2008_000003.jpg"] == str(root / "JPEGImages" / "2008_000003.jpg")
    sources.get("voc").judge(listing(root), config("voc"), None)


LAUGHS = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
          '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
          '<annotation><filename>&lol2;</filename></annotation>')


def test_broken_and_dtd_declaring_voc_files_are_all_named_at_once(tmp_path):
    root = write_voc(tmp_path / "VOC2012")
    (root / "Annotations" / "laughs.xml").write_text(LAUGHS)
    # the same declaration in UTF-16 hides from a search of the bytes
    (root / "Annotations" / "wide.xml").write_bytes(
        LAUGHS.replace("1.0", '1.0" encoding="UTF-16').encode("utf-16"))
    (root / "Annotations" / "cut.xml").write_text("<annotation><filename>a.jpg</file")
    (root / "Annotations" / "boxless.xml").write_text(
        voc_xml("b.jpg", ("dog", 0, (1, 1, 2, 2))).replace("<xmax>2</xmax>", ""))
    with pytest.raises(data.DataError) as refused:
        sources.get("voc").judge(listing(root), config("voc"), None)
    lines = str(refused.value).splitlines()
    assert lines[0].startswith("4 of the 7 VOC annotation files in")
    named = {line.split(":")[0] for line in lines[1:]}
    assert named == {"- Annotations/laughs.xml", "- Annotations/wide.xml",
                     "- Annotations/cut.xml", "- Annotations/boxless.xml"}
    assert "declares a DTD" in next(line for line in lines if "laughs" in line)
    assert "declares a DTD" in next(line for line in lines if "wide" in line)
    assert "malformed XML" in next(line for line in lines if "cut" in line)


def test_a_voc_run_without_classes_is_told_the_object_names(tmp_path):
    root = write_voc(tmp_path / "VOC2012")
    with pytest.raises(ParameterError, match=r'classes is required.*\["cat", "dog"\]'):
        sources.get("voc").judge(listing(root), config("voc", classes=()), None)
    with pytest.raises(data.DataError, match="no annotation files in Annotations/"):
        sources.get("voc").ingest(listing(root / "JPEGImages"), config("voc"))


# --- a table of boxes -----------------------------------------------------------------


def write_table(root, rows, name="boxes.csv"):
    for image in ("a.png", "b.png", "sub/c.png"):
        write_image(root / image)
    header = "path,label,x_min,y_min,x_max,y_max,site"
    (root / name).write_text("\n".join([header, *rows]) + "\n")
    return ImageTableDataset(filepath=str(root / name)).load()


def from_table(table):
    return data.boxes_from_table(table, "path", "label", ["x_min", "y_min", "x_max", "y_max"])


def test_the_rows_of_an_image_become_its_boxes(tmp_path):
    root = tmp_path / "set"
    table = write_table(root, ["b.png,cat,1,2,3.5,4,north", "sub/c.png,,,,,,south",
                               "b.png,dog,0,0,20,16,north",
                               "https://example.com/d.png,cat,1,1,2,2,east"])
    manifest = from_table(table)
    assert list(manifest.columns) == ["path", "relative_path", "boxes", "site"]
    assert manifest["relative_path"].tolist() == ["b.png", "https://example.com/d.png",
                                                  "sub/c.png"]
    assert boxes(manifest, "b.png") == [["cat", 1, 2, 3.5, 4], ["dog", 0, 0, 20, 16]]
    assert boxes(manifest, "sub/c.png") == []
    assert manifest["site"].tolist() == ["north", "east", "south"]
    assert manifest["path"].tolist() == [str(root / "b.png"), "https://example.com/d.png",
                                         str(root / "sub" / "c.png")]


def test_a_column_that_differs_within_an_image_is_refused_naming_both_column_and_image(tmp_path):
    table = write_table(tmp_path, ["a.png,cat,1,2,3,4,north", "a.png,dog,1,2,3,4,south"])
    with pytest.raises(data.DataError, match=r"column 'site' differs between the rows of "
                                             r"image 'a\.png'"):
        from_table(table)


def test_rows_whose_box_is_not_four_numbers_and_a_label_are_named(tmp_path):
    table = write_table(tmp_path, ["a.png,cat,1,2,3,4,n", "a.png,,1,2,3,4,n",
                                   "b.png,cat,1,,3,4,n", "b.png,dog,1,two,3,4,n"])
    with pytest.raises(data.DataError) as refused:
        from_table(table)
    message = str(refused.value)
    assert message.startswith("3 rows of the box table cannot be read")
    assert "row 2 'a.png': a box without a label in column 'label'" in message
    assert "row 3 'b.png': empty 'y_min' where the other box columns are not" in message
    assert "row 4 'b.png': 'two' in column 'y_min' is not a number" in message
    frame = pd.DataFrame({"path": ["a.png"], "label": ["cat"], "x_min": [1]})
    with pytest.raises(data.DataError, match="box_columns: the manifest has no column "
                                             "'y_min', 'x_max', 'y_max'"):
        from_table(data.ImageTable(frame, str(tmp_path)))


def test_the_manifest_source_reads_a_table_of_boxes_for_detection(tmp_path):
    table = write_table(tmp_path, ["a.png,cat,1,2,3,4,n", "b.png,dog,0,0,5,5,n"])
    manifest = sources.get("manifest").ingest(table, config("manifest"))
    assert boxes(manifest, "a.png") == [["cat", 1, 2, 3, 4]]
    with pytest.raises(ParameterError, match=r'classes is required.*\["cat", "dog"\]'):
        sources.get("manifest").judge(table, config("manifest", classes=()), "boxes.csv")


def test_coco_and_voc_are_registered_sources():
    assert type(sources.get("coco")).__name__ == "CocoSource"
    assert sources.get("voc").entry == sources.get("coco").entry == "raw_images"

"""`cxr-node dataset import`: NIH ChestX-ray8, VinDr-CXR and our CSV, from files written
here in the formats as published (headers, quirks and all), to a folder training reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.phantom import dx_dataset
from model.preprocess import PreprocessConfig
from model.vocabulary import DEFAULT_LABELS
from node.cli import main
from training import dataset_import
from training.dataset import DetectionDataset, read_labels_csv
from training.dataset_import import DatasetImportError, import_dataset

NIH_BOXES = "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
NIH_ENTRY = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
             "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n")
VINDR_HEADER = "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
UID_ROOT = "1.2.826.0.1.3680043.8.498.77"


def chest(rows: int, columns: int, peak: int, boxes=(), seed: int = 0) -> np.ndarray:
    """A smooth 'chest' with a brighter patch in each box (x1, y1, x2, y2)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:columns] / max(rows, columns)
    pixels = 0.35 + 0.3 * np.exp(-((x - 0.5) ** 2) * 6) * np.cos(3 * y) ** 2
    for x1, y1, x2, y2 in boxes:
        pixels[int(y1):int(y2), int(x1):int(x2)] += 0.3
    pixels += rng.normal(0, 0.01, pixels.shape)
    return (pixels.clip(0, 1) * peak).astype(np.uint16 if peak > 255 else np.uint8)


# --------------------------------------------------------------------------- NIH


# Image Index, Finding Labels, Patient ID, View Position, boxes (label, x, y, w, h)
NIH_IMAGES = [
    ("00000001_000.png", "Cardiomegaly", "1", "PA", [("Cardiomegaly", 300, 500, 420, 250)]),
    ("00000001_001.png", "Cardiomegaly|Effusion", "1", "PA", [("Effusion", 700, 600, 180, 200)]),
    ("00000002_000.png", "Nodule", "2", "PA", [("Nodule", 600, 300, 40.5, 38)]),
    ("00000003_000.png", "Pneumonia", "3", "AP", [("Pneumonia", 150, 350, 220, 260)]),
    ("00000004_000.png", "Mass|Nodule", "4", "PA",
     [("Mass", 200, 200, 150, 140), ("Nodule", 650, 700, 45, 50)]),
    ("00000005_000.png", "No Finding", "5", "PA", []),
    ("00000005_001.png", "No Finding", "5", "PA", []),
    ("00000006_000.png", "No Finding", "6", "PA", []),
    ("00000007_000.png", "Atelectasis", "7", "PA", []),  # a finding without a box
    ("00000009_000.png", "No Finding", "9", "PA", []),
    ("00000010_000.png", "Nodule", "10", "PA", [("Nodule", 400, 420, 36, 40)]),
]
NIH_NOT_DOWNLOADED = ("00000008_000.png", "No Finding", "8", "PA", [])


def write_nih(root: Path) -> dict[str, Path]:
    """8-bit 1024 x 1024 PNGs in images/ (one RGBA, as some published ones are), and the
    two CSV files; one listed image was not downloaded."""
    (root / "images").mkdir(parents=True)
    boxes, entries = [], []
    for number, (name, _, _, view, drawn) in enumerate(NIH_IMAGES):
        pixels = chest(1024, 1024, 255, [(x, y, x + w, y + h) for _, x, y, w, h in drawn],
                       seed=number)
        image = Image.fromarray(pixels)
        (image.convert("RGBA") if view == "AP" else image).save(root / "images" / name)
    for name, labels, patient, view, drawn in [*NIH_IMAGES, NIH_NOT_DOWNLOADED]:
        follow_up = name[9:12].lstrip("0") or "0"
        entries.append(f"{name},{labels},{follow_up},{patient},058Y,M,{view},2500,2048,"
                       "0.143,0.143,\n")
        boxes += [f"{name},{label},{x},{y},{w},{h},,,\n" for label, x, y, w, h in drawn]
    files = {"boxes": root / "BBox_List_2017.csv", "entry": root / "Data_Entry_2017.csv",
             "images": root / "images"}
    files["boxes"].write_text(NIH_BOXES + "".join(boxes))
    files["entry"].write_text(NIH_ENTRY + "".join(entries))
    return files


@pytest.fixture(scope="module")
def nih(tmp_path_factory) -> dict[str, Path]:
    return write_nih(tmp_path_factory.mktemp("nih"))


def labels_of(folder: Path, name: str = "labels.csv") -> dict[str, dict]:
    """file name -> {patient, boxes: [(label, x1, y1, x2, y2)], rows, columns, uid, path
    as labels.csv gives it}."""
    labels = folder / name
    return {image.path.name: {"patient": image.patient_id, "rows": image.rows,
                              "columns": image.columns, "uid": image.sop_instance_uid,
                              "path": image.path.relative_to(labels.parent),
                              "boxes": [(b.label, b.x1, b.y1, b.x2, b.y2) for b in image.boxes]}
            for image in read_labels_csv(folder / name)}


def test_nih_import_takes_boxes_normals_and_patients_and_says_what_it_left_out(nih, tmp_path):
    summary = import_dataset("nih", nih["boxes"], nih["images"], tmp_path / "out",
                             data_entry=nih["entry"])

    images = labels_of(tmp_path / "out")
    assert sorted(images) == sorted(name for name, *_ in NIH_IMAGES if name != "00000007_000.png")
    assert images["00000001_001.png"]["boxes"] == [("Pleural effusion", 700, 600, 880, 800)]
    assert images["00000002_000.png"]["boxes"] == [("Nodule", 600, 300, 640.5, 338)]
    assert images["00000003_000.png"]["boxes"] == [("Infiltration", 150, 350, 370, 610)]
    assert [b[0] for b in images["00000004_000.png"]["boxes"]] == ["Mass", "Nodule"]
    assert (images["00000005_001.png"]["boxes"], images["00000005_001.png"]["patient"]) == \
        ([], "5")
    assert {(i["rows"], i["columns"]) for i in images.values()} == {(1024, 1024)}
    # The published files, hard-linked under images/ as they were.
    source = nih["images"] / "00000002_000.png"
    written = tmp_path / "out" / images["00000002_000.png"]["path"]
    assert images["00000002_000.png"]["path"] == Path("images/00000002_000.png")
    assert written.read_bytes() == source.read_bytes()
    assert written.stat().st_ino == source.stat().st_ino
    assert summary["left_out"] == {"findings without a box": 1, "image file not found": 1}
    assert summary["not_found_examples"] == ["00000008_000.png"]
    assert summary["boxed_with_other_findings_unboxed"] == 1  # Cardiomegaly on 00000001_001
    assert summary["views"] == {"PA": 9, "AP": 1}
    assert (summary["images"], summary["patients"], summary["normal_images"]) == (10, 8, 4)
    assert summary["boxes"] == {"Cardiomegaly": 1, "Infiltration": 1, "Mass": 1, "Nodule": 3,
                                "Pleural effusion": 1}
    assert json.loads((tmp_path / "out" / "import_summary.json").read_text()) == summary

    # Derived UIDs are the same on every import: the data fingerprint does not drift.
    import_dataset("nih", nih["boxes"], nih["images"], tmp_path / "again",
                   data_entry=nih["entry"])
    assert {n: i["uid"] for n, i in labels_of(tmp_path / "again").items()} == \
        {n: i["uid"] for n, i in images.items()}


def test_bad_rows_of_both_nih_files_are_listed_by_line_and_nothing_is_written(nih, tmp_path,
                                                                             capsys):
    boxes = tmp_path / "BBox_List_2017.csv"
    boxes.write_text(nih["boxes"].read_text() + "00000009_000.png,Nodule,10,20,-3,40,,,\n")
    entry = tmp_path / "Data_Entry_2017.csv"
    lines = nih["entry"].read_text().splitlines(keepends=True)
    entry.write_text("".join(lines[:3]) + "00000011_000.png,Nodule|No Finding,0,11,058Y,M,PA,"
                     "2500,2048,0.143,0.143,\n" + "".join(lines[3:]))
    out = tmp_path / "out"

    code = main(["dataset", "import", str(boxes), "--format", "nih", "--data-entry",
                 str(entry), "--images", str(nih["images"]), "--out", str(out)])

    assert code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"cxr-node dataset import: error: {boxes}: 1 bad row(s), nothing imported",
        "cxr-node dataset import: error: line 9: Bbox w must be > 0, got -3",
        f"cxr-node dataset import: error: {entry}: 1 bad row(s), nothing imported",
        'cxr-node dataset import: error: line 4: "No Finding" together with findings']
    assert sorted(p.name for p in tmp_path.iterdir()) == ["BBox_List_2017.csv",
                                                          "Data_Entry_2017.csv"]


# --------------------------------------------------------------------------- VinDr

VINDR_IDS = {name: f"{index:x}" * 32 for index, name in enumerate("abcdefghijk", start=1)}
SPACING = 0.2  # mm: 150 px is 30 mm


def vindr_rows() -> list[str]:
    a, b, c, d, e, f, g, h, i, j, k = (VINDR_IDS[key] for key in "abcdefghijk")
    return [
        f"{a},Cardiomegaly,3,R1,120,300,400,460", f"{a},Cardiomegaly,3,R2,124,304,404,464",
        f"{a},Nodule/Mass,8,R1,300,100,340,140", f"{a},Nodule/Mass,8,R2,302,102,342,142",
        f"{a},Aortic enlargement,0,R3,200,100,260,160",  # one reader: no consensus
        f"{b},Nodule/Mass,8,R4,100,100,300,300", f"{b},Nodule/Mass,8,R5,104,100,304,300",
        f"{b},Lung Opacity,7,R4,100,100,300,300", f"{b},Lung Opacity,7,R6,100,104,300,304",
        f"{b},Nodule/Mass,8,R6,102,97,302,297",
        *(f"{c},No finding,14,R{r},,,," for r in (1, 2, 3)),
        *(f"{d},No finding,14,R{r},,,," for r in (7, 8, 9)),
        *(f"{e},Aortic enlargement,0,R{r},200,100,260,160" for r in (1, 2, 3)),
        f"{f},Consolidation,4,R1,50,300,200,500", f"{f},Infiltration,6,R1,52,300,202,500",
        f"{f},Infiltration,6,R2,48,300,198,500", f"{f},No finding,14,R3,,,,",
        f"{g},Nodule/Mass,8,R1,100,100,300,300", f"{g},Nodule/Mass,8,R2,100,100,300,300",
        f"{g},Pleural effusion,10,R1,300,400,500,600",
        f"{g},Pleural effusion,10,R2,300,400,500,600", f"{g},No finding,14,R3,,,,",
        *(f"{h},No finding,14,R{r},,,," for r in (1, 2, 3)),  # its file is missing
        *(f"{i},No finding,14,R{r},,,," for r in (4, 5, 6)),
        *(f"{j},No finding,14,R{r},,,," for r in (4, 5, 6)),
        f"{k},Cardiomegaly,3,R1,100,320,390,470", f"{k},Cardiomegaly,3,R2,100,320,390,470",
        f"{k},No finding,14,R3,,,,",
    ]


def write_vindr(root: Path) -> dict[str, Path]:
    """train/<image_id>.dicom (16-bit DX, one MONOCHROME1, one without patient ID, one
    without pixel spacing), a test image train.csv does not list, and train.csv."""
    (root / "train").mkdir(parents=True)
    for index, key in enumerate("abcdefgijk"):
        pixels = chest(640, 512, 4095, seed=10 + index)
        photometric = "MONOCHROME1" if key == "c" else "MONOCHROME2"
        if key == "c":
            pixels = 4095 - pixels
        ds = dx_dataset(pixels, patient_id="" if key == "d" else f"VINDR{index}",
                        photometric=photometric, pixel_spacing_mm=SPACING)
        if key == "g":
            del ds.ImagerPixelSpacing
        ds.save_as(root / "train" / f"{VINDR_IDS[key]}.dicom", enforce_file_format=True)
    dx_dataset(chest(640, 512, 4095)).save_as(root / "train" / f"{'f0' * 16}.dicom",
                                              enforce_file_format=True)
    (root / "train.csv").write_text(VINDR_HEADER + "\n".join(vindr_rows()) + "\n")
    return {"labels": root / "train.csv", "images": root / "train"}


@pytest.fixture(scope="module")
def vindr(tmp_path_factory) -> dict[str, Path]:
    return write_vindr(tmp_path_factory.mktemp("vindr"))


def test_vindr_import_merges_readers_maps_classes_and_splits_nodule_from_mass(vindr, tmp_path):
    summary = import_dataset("vindr", vindr["labels"], vindr["images"], tmp_path / "out")

    images = {name.split(".")[0]: value for name, value in labels_of(tmp_path / "out").items()}
    ids = VINDR_IDS
    assert sorted(images) == sorted(ids[k] for k in "abcdfgijk")
    assert images[ids["a"]]["boxes"] == [("Cardiomegaly", 122, 302, 402, 462),
                                         ("Nodule", 301, 101, 341, 141)]  # 8 mm
    assert images[ids["b"]]["boxes"] == [("Mass", 102, 99, 302, 299)]  # 40 mm, 3 readers
    assert images[ids["c"]]["boxes"] == images[ids["d"]]["boxes"] == []
    assert images[ids["d"]]["patient"] == ids["d"]  # no PatientID: the image is its own
    assert images[ids["c"]]["patient"] == "VINDR2"
    # Consolidation and Infiltration are one finding; R1 drew both over one region.
    assert images[ids["f"]]["boxes"] == [("Infiltration", 49, 300, 199, 500)]
    assert images[ids["g"]]["boxes"] == [("Nodule", 100, 100, 300, 300),  # no spacing
                                         ("Pleural effusion", 300, 400, 500, 600)]
    assert summary["left_out"] == {"image file not found": 1,
                                   "only findings outside the vocabulary": 1}
    assert summary["boxes_outside_vocabulary"] == {"Aortic enlargement": 1, "Lung Opacity": 1}
    assert summary["nodule_mass"] == {"Mass": 1, "Nodule": 1, "Nodule (no pixel spacing)": 1}
    assert summary["consensus"] == "majority" and summary["image_files_not_used"] == 2


def test_vindr_consensus_comes_from_the_configuration(vindr, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CXR_NODE_LABELS__VINDR_CONSENSUS", "all")

    code = main(["dataset", "import", str(vindr["labels"]), "--format", "vindr", "--images",
                 str(vindr["images"]), "--out", str(tmp_path / "out")])

    assert code == 0
    printed = capsys.readouterr().out
    # b (all three drew the mass), c, d, i, j (all said No finding); a, f, g, k drop out.
    assert "imported 5 images of 5 patients" in printed
    assert "left out: image file not found 1, only findings outside the vocabulary 1" in printed
    assert json.loads((tmp_path / "out" / "import_summary.json").read_text())["consensus"] == \
        "all"


# PhysioNet vindr-cxr 1.0.0: annotations/ beside train/ and test/, rad_id second and no
# class_id, the paper's 22 classes; the test set's consensus without rad_id.
PHYSIONET_HEADER = "image_id,rad_id,class_name,x_min,y_min,x_max,y_max\n"
PHYSIONET_TEST_HEADER = "image_id,class_name,x_min,y_min,x_max,y_max\n"
PHYSIONET_IMAGE_LABELS = ("image_id,rad_id,Aortic enlargement,Atelectasis,Calcification,"
                          "Cardiomegaly,Clavicle fracture,Consolidation,Edema,Emphysema,"
                          "Enlarged PA,ILD,Infiltration,Lung Opacity,Lung cavity,Lung cyst,"
                          "Mediastinal shift,Nodule/Mass,Pleural effusion,Pleural thickening,"
                          "Pneumothorax,Pulmonary fibrosis,Rib fracture,Other lesion,COPD,"
                          "Lung tumor,Pneumonia,Tuberculosis,Other diseases,No finding\n")
PHYSIONET_TRAIN = {name: f"{index:x}" * 32 for index, name in enumerate("pqrst", start=1)}
PHYSIONET_TEST = {name: f"{index:x}0" * 16 for index, name in enumerate("uvw", start=1)}


def physionet_train_rows() -> list[str]:
    p, q, r, s, t = (PHYSIONET_TRAIN[key] for key in "pqrst")
    return [
        f"{p},R1,Cardiomegaly,120,300,400,460", f"{p},R2,Cardiomegaly,124,304,404,464",
        *(f"{p},R{n},Rib fracture,20,40,80,70" for n in (1, 2, 3)),  # kept out, counted
        f"{p},R3,Nodule/Mass,300,100,340,140",  # one reader of three
        *(f"{q},R{n},Edema,50,300,460,560" for n in (4, 5, 6)),  # only outside: left out
        *(f"{r},R{n},No finding,,,," for n in (7, 8, 9)),
        *(f"{s},R{n},No finding,,,," for n in (1, 2, 3)),  # not downloaded
        f"{t},R4,Pneumothorax,300,60,480,300", f"{t},R5,Pneumothorax,304,60,480,296",
        f"{t},R6,No finding,,,,", f"{t},R4,Emphysema,0,0,512,640",
    ]


def write_physionet(root: Path) -> dict[str, Path]:
    """The layout as downloaded: annotations/*.csv, train/<id>.dicom, test/<id>.dicom (one
    train image missing), and the files a download also holds that are not images."""
    for folder in ("annotations", "train", "test"):
        (root / folder).mkdir(parents=True)
    images = [("train", key, image) for key, image in PHYSIONET_TRAIN.items() if key != "s"]
    images += [("test", key, image) for key, image in PHYSIONET_TEST.items()]
    for index, (folder, key, image) in enumerate(images):
        ds = dx_dataset(chest(640, 512, 4095, seed=40 + index), patient_id=f"PN{key}",
                        pixel_spacing_mm=SPACING)
        ds.save_as(root / folder / f"{image}.dicom", enforce_file_format=True)
    u, v, w = (PHYSIONET_TEST[key] for key in "uvw")
    test_rows = [f"{u},Nodule/Mass,100,100,300,260",  # 40 mm: a mass
                 f"{u},Nodule/Mass,400,500,430,530",  # 6 mm: a nodule
                 f"{u},Pleural effusion,300,400,500,600",
                 f"{u},Clavicle fracture,60,20,160,60",
                 f"{v},No finding,,,,",
                 f"{w},Mediastinal shift,150,100,350,600"]
    files = {"train": root / "annotations" / "annotations_train.csv",
             "test": root / "annotations" / "annotations_test.csv", "images": root}
    files["train"].write_text(PHYSIONET_HEADER + "\n".join(physionet_train_rows()) + "\n")
    files["test"].write_text(PHYSIONET_TEST_HEADER + "\n".join(test_rows) + "\n")
    (root / "annotations" / "image_labels_train.csv").write_text(
        PHYSIONET_IMAGE_LABELS + f"{PHYSIONET_TRAIN['r']},R7" + ",0" * 27 + ",1\n")
    (root / "LICENSE.txt").write_text("PhysioNet Credentialed Health Data License 1.5.0\n")
    (root / "SHA256SUMS.txt").write_text("")
    (root / "RECORDS").write_text("train\ntest\n")  # no suffix: checked for DICM, not one
    return files


@pytest.fixture(scope="module")
def physionet(tmp_path_factory) -> dict[str, Path]:
    return write_physionet(tmp_path_factory.mktemp("vindr-cxr") / "1.0.0")


def test_physionet_train_annotations_import_from_the_download_root(physionet, tmp_path,
                                                                   capsys):
    out = tmp_path / "out"

    code = main(["dataset", "import", str(physionet["train"]), "--format", "vindr",
                 "--images", str(physionet["images"]), "--out", str(out)])

    assert code == 0
    images = {name.split(".")[0]: value for name, value in labels_of(out).items()}
    ids = PHYSIONET_TRAIN
    assert sorted(images) == sorted(ids[k] for k in "prt")
    assert images[ids["p"]]["boxes"] == [("Cardiomegaly", 122, 302, 402, 462)]
    assert images[ids["p"]]["path"] == Path(f"images/train/{ids['p']}.dicom")
    assert images[ids["r"]]["boxes"] == []  # three readers said No finding
    assert images[ids["t"]]["boxes"] == [("Pneumothorax", 302, 60, 480, 298)]
    summary = json.loads((out / "import_summary.json").read_text())
    assert summary["boxes_outside_vocabulary"] == {"Edema": 1, "Rib fracture": 1}
    assert summary["left_out"] == {"image file not found": 1,
                                   "only findings outside the vocabulary": 1}
    assert summary["not_found_examples"] == [ids["s"]]
    assert summary["image_files_not_used"] == 4  # q (Edema only) and the three test images
    printed = capsys.readouterr().out
    assert "imported 3 images of 3 patients" in printed
    assert "boxes outside the vocabulary (dropped): Edema 1, Rib fracture 1" in printed


def test_physionet_test_consensus_keeps_every_box(physionet, tmp_path):
    """annotations_test.csv has no rad_id: one consensus reading, kept whatever the rule."""
    summary = import_dataset("vindr", physionet["test"], physionet["images"],
                             tmp_path / "out", consensus="all")

    images = {name.split(".")[0]: value for name, value in labels_of(tmp_path / "out").items()}
    ids = PHYSIONET_TEST
    assert sorted(images) == sorted(ids[k] for k in "uv")
    assert images[ids["u"]]["boxes"] == [("Mass", 100, 100, 300, 260),
                                         ("Nodule", 400, 500, 430, 530),
                                         ("Pleural effusion", 300, 400, 500, 600)]
    assert images[ids["u"]]["path"] == Path(f"images/test/{ids['u']}.dicom")
    assert images[ids["v"]]["boxes"] == []
    assert summary["boxes_outside_vocabulary"] == {"Clavicle fracture": 1,
                                                   "Mediastinal shift": 1}
    assert summary["left_out"] == {"only findings outside the vocabulary": 1}
    assert summary["nodule_mass"] == {"Mass": 1, "Nodule": 1}


# --------------------------------------------------------------------------- our CSV


def write_site(root: Path) -> dict[str, Path]:
    """DICOMs found by SOP Instance UID (one file without a suffix), a 16-bit PNG and a
    JPEG named by their UID, and our CSV with a patient_id column for the pictures."""
    folder = root / "export"
    (folder / "dx").mkdir(parents=True)
    rows = ["sop_instance_uid,label,x1,y1,x2,y2,reader,patient_id"]
    for index in range(6):
        uid = f"{UID_ROOT}.1.{index}"
        box = (80, 90, 160, 150) if index % 2 == 0 else None
        ds = dx_dataset(chest(400, 360, 4095, [box] if box else [], seed=20 + index),
                        sop_instance_uid=uid, patient_id=f"SITE{index}")
        ds.save_as(folder / "dx" / (f"{index}.dcm" if index else "first"),
                   enforce_file_format=True)
        rows.append(f"{uid},Nodule,80,90,160,150,dr_a," if box else f"{uid},,,,,,dr_a,")
    rows.append(f"{UID_ROOT}.1.0,SCT:233604007,10,10,60,60,dr_a,")  # pneumonia: outside
    png, jpeg = f"{UID_ROOT}.2.1", f"{UID_ROOT}.2.2"
    Image.fromarray(chest(300, 280, 60000, [(100, 100, 200, 180)], seed=30)).save(
        folder / f"{png}.png")
    Image.fromarray(chest(320, 300, 255, seed=31)).save(folder / f"{jpeg}.jpg", quality=92)
    rows += [f"{png},Mass,100,100,200,180,dr_b,PICS1", f"{jpeg},,,,,,dr_b,PICS2"]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return {"labels": root / "labels.csv", "images": folder}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> dict[str, Path]:
    return write_site(tmp_path_factory.mktemp("site"))


def test_csv_import_finds_dicoms_by_uid_and_pictures_by_name(site, tmp_path):
    summary = import_dataset("csv", site["labels"], site["images"], tmp_path / "out")

    images = {i["uid"]: i for i in labels_of(tmp_path / "out").values()}
    assert images[f"{UID_ROOT}.1.0"]["boxes"] == [("Nodule", 80, 90, 160, 150)]
    assert images[f"{UID_ROOT}.1.0"]["path"] == Path("images/dx/first")
    assert images[f"{UID_ROOT}.1.1"]["patient"] == "SITE1"  # from the DICOM header
    png = images[f"{UID_ROOT}.2.1"]
    assert (png["patient"], png["rows"], png["columns"]) == ("PICS1", 300, 280)
    assert png["boxes"] == [("Mass", 100, 100, 200, 180)]
    assert images[f"{UID_ROOT}.2.2"]["path"] == Path(f"images/{UID_ROOT}.2.2.jpg")
    assert summary["boxes_outside_vocabulary"] == {"SCT:233604007": 1}
    assert (summary["images"], summary["patients"], summary["left_out"]) == (8, 8, {})


def test_a_box_outside_its_image_refuses_the_import(site, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text(site["labels"].read_text() + f"{UID_ROOT}.2.1,Nodule,250,10,330,40,,\n")

    with pytest.raises(DatasetImportError, match=rf"{UID_ROOT}\.2\.1: Nodule box \(250, 10, "
                       rf"330, 40\) is not inside the 280 x 300 image .*\.png"):
        import_dataset("csv", labels, site["images"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_test_split_holds_out_whole_patients(site, tmp_path):
    summary = import_dataset("csv", site["labels"], site["images"], tmp_path / "out",
                             test_fraction=0.3, seed=1)

    train, test = labels_of(tmp_path / "out"), labels_of(tmp_path / "out", "test/labels.csv")
    assert train and test
    assert not {i["patient"] for i in train.values()} & {i["patient"] for i in test.values()}
    assert all(str(i["path"]).startswith("../images/") for i in test.values())
    assert summary["split"]["test/labels.csv"]["images"] == len(test)


def test_a_failure_while_writing_leaves_nothing(site, tmp_path, monkeypatch):
    calls = []

    def full_disk(source, target):  # noqa: ANN001
        calls.append(source)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())

    monkeypatch.setattr(dataset_import, "_link_or_copy", full_disk)

    with pytest.raises(OSError, match="No space left"):
        import_dataset("csv", site["labels"], site["images"], tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # neither out nor the hidden partial folder


@pytest.mark.parametrize(("args", "message"), [
    (["--format", "nih"], "--data-entry (NIH Data_Entry_2017.csv) goes with --format nih, "
                          "and only with it"),
    (["--format", "csv", "--test-fraction", "1"], "--test-fraction 1.0 must be in [0, 1)"),
    (["--format", "csv", "--out", "{existing}"], "--out {existing} exists and is not an empty "
                                                 "folder; give a new one"),
])
def test_bad_arguments_are_one_line_and_exit_2(site, tmp_path, capsys, args, message):
    existing = tmp_path / "full"
    existing.mkdir()
    (existing / "x").write_text("")
    args = [a.format(existing=existing) for a in args]
    out = [] if "--out" in args else ["--out", str(tmp_path / "out")]

    code = main(["dataset", "import", str(site["labels"]), "--images", str(site["images"]),
                 *out, *args])

    assert code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"cxr-node dataset import: error: {message.format(existing=existing)}"]


# --------------------------------------------------------------------------- end to end


def test_imported_folders_train_and_evaluate(nih, vindr, site, tmp_path, capsys):
    """import (each format) -> `cxr-node train` (one step at 128 px, on our CSV's folder:
    DICOM, a 16-bit PNG and a JPEG) -> `cxr-node evaluate` on each format's test split.
    Training reads images as evaluation does (model.image_file), so one run covers it;
    each folder's training images are read for training here too."""
    sources = {"nih": [str(nih["boxes"]), "--data-entry", str(nih["entry"]), "--images",
                       str(nih["images"])],
               "vindr": [str(vindr["labels"]), "--images", str(vindr["images"])],
               "csv": [str(site["labels"]), "--images", str(site["images"])]}
    for fmt, source in sources.items():
        assert main(["dataset", "import", *source, "--format", fmt, "--out",
                     str(tmp_path / fmt), "--test-fraction", "0.25"]) == 0
        images = read_labels_csv(tmp_path / fmt / "labels.csv")
        prepared = DetectionDataset(images, DEFAULT_LABELS, PreprocessConfig(image_size=128))
        assert prepared.pixels(0).shape == (128, 128) and len(prepared) == len(images)
    run = tmp_path / "run"

    assert main(["train", "--data", str(tmp_path / "csv"), "--out", str(run), "--image-size",
                 "128", "--epochs", "1", "--batch-size", "4", "--workers", "0", "--device",
                 "cpu", "--version", "0.0.1-import"]) == 0
    for fmt in sources:
        report = tmp_path / f"report-{fmt}"
        assert main(["evaluate", "--data", str(tmp_path / fmt / "test"), "--model",
                     str(run / "model"), "--out", str(report), "--device", "cpu"]) == 0

        metrics = json.loads((report / "metrics.json").read_text())
        test_images = len(read_labels_csv(tmp_path / fmt / "test" / "labels.csv"))
        assert metrics["data"]["images"] == test_images > 0
        assert metrics["model"]["version"] == "0.0.1-import"
        assert set(metrics["per_finding"]) == set(DEFAULT_LABELS)
        assert (report / "summary.md").read_text().startswith("# Evaluation of")
    with open(run / "metrics.jsonl") as handle:
        assert [json.loads(line)["epoch"] for line in handle] == [1]
    assert capsys.readouterr().out.count("mAP@0.5") == 3

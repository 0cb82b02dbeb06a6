"""Sources read every supported format; bad rows become counted rejects, not crashes."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import SourceConfig
from pipeline.sources import ImageLoadError, decode_image, iter_source, read_image_bytes
from tests.conftest import png_bytes


def test_txt_every_line_is_a_row_including_empty(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("a red barn\n\na dog on a sofa\n")
    rows = list(iter_source(SourceConfig(kind="captions", path=str(p))))
    assert [r.caption for r in rows] == ["a red barn", "", "a dog on a sofa"]
    assert [r.source_id for r in rows] == ["c.txt:0", "c.txt:1", "c.txt:2"]


def test_jsonl_with_garbage_line_and_task(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"caption": "a cat", "task": "color"}\n{not json\n["a list"]\n')
    rows = list(iter_source(SourceConfig(kind="captions", path=str(p))))
    assert rows[0].caption == "a cat" and rows[0].task == "color" and rows[0].error is None
    assert rows[1].error.startswith("bad_source_row") and rows[2].error.startswith("bad_source_row")


def test_parquet_with_hf_image_struct(tmp_path):
    img = (np.arange(32 * 48 * 3) % 251).astype(np.uint8).reshape(32, 48, 3)
    t = pa.table({"caption": ["one", "two"],
                  "image": [{"bytes": png_bytes(img), "path": None}, {"bytes": png_bytes(img[:, ::-1]), "path": None}]})
    p = tmp_path / "src.parquet"
    pq.write_table(t, p)
    rows = list(iter_source(SourceConfig(kind="parquet", path=str(p))))
    assert [r.caption for r in rows] == ["one", "two"]
    arr = decode_image(read_image_bytes(rows[1].image_ref), 512)
    assert np.array_equal(arr, img[:, ::-1])


def test_images_folder_keeps_non_images_for_the_load_stage(bad_inputs_folder):
    rows = list(iter_source(SourceConfig(kind="images", path=str(bad_inputs_folder))))
    names = [r.source_id.split("/")[-1] for r in rows]
    assert names == ["a_coffee.png", "b_chelsea.png", "c_truncated.png", "d_notes.png",
                     "e_empty_caption.png", "f_long_caption.png"]
    with pytest.raises(ImageLoadError):
        decode_image(read_image_bytes(rows[2].image_ref), 512)      # truncated PNG
    with pytest.raises(ImageLoadError):
        decode_image(read_image_bytes(rows[3].image_ref), 512)      # text file named .png


def test_limit_and_missing_path(tmp_path):
    rows = list(iter_source(SourceConfig(kind="demo", limit=3)))
    assert len(rows) == 3 and all(r.image_ref["kind"] == "skimage" for r in rows)
    with pytest.raises(FileNotFoundError):
        list(iter_source(SourceConfig(kind="captions", path=str(tmp_path / "none.txt"))))


def test_decode_resizes_longer_side():
    big = np.zeros((300, 1200, 3), np.uint8)
    assert decode_image(png_bytes(big), 512).shape == (128, 512, 3)

"""Load stage: read the source image of each row, decode it completely, resize, store PNG bytes.

Runs first so a broken or non-image file is rejected before any LLM time is spent on it. Rows
without an image pass on (their tasks generate a base image later); a task that needs a real
input image and has none is rejected here as ``no_input_image``. An image that cannot be used is
rejected with the reason ``decode_image`` gives (empty_file, not_an_image, truncated_image,
corrupt_image, image_too_small, image_too_large, unsupported_image_mode), a file that is not there
as ``missing_image``, one that may not be read as ``unreadable_image``; any other OSError (a
storage or network hiccup) goes to the stage, which retries it.
"""
from __future__ import annotations

import json

from pipeline.schema import reject
from pipeline.sources import ImageLoadError, decode_image, encode_png, read_image_bytes
from pipeline.stages.base import Stage
from tasks import get_task


class LoadStage(Stage):
    name = "load"
    resources_key = "load"

    def process_row(self, row: dict) -> None:
        task = get_task(row["task"])
        if not row["image_ref"]:
            if task.needs_input_image:
                reject(row, self.name, "no_input_image", "source row has no image and this task has no base-image generator")
            return
        ref = json.loads(row["image_ref"])
        where = ref.get("path") or ref.get("name")
        try:
            arr = decode_image(read_image_bytes(ref), self.cfg.output.max_side, self.cfg.output.max_source_pixels)
        except ImageLoadError as e:         # reason: empty_file, not_an_image, truncated_image, ... (sources.py)
            reject(row, self.name, e.reason, f"{where}: {e}")
            return
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
            reject(row, self.name, "missing_image", f"{where}: {type(e).__name__}: {e}")
            return
        except PermissionError as e:
            reject(row, self.name, "unreadable_image", f"{where}: {e}")
            return
        row["input_png"] = encode_png(arr)

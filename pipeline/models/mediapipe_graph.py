"""Run a graph that ships inside the mediapipe 0.10.14 wheel (pose, selfie segmentation, face
detection: the ``.binarypb`` graphs and ``.tflite`` weights under ``mediapipe/modules``; Apache-2.0).
Later mediapipe releases no longer bundle these models, hence the pin.

Why not ``mp.solutions.pose.Pose``: mediapipe 0.10.14 declares protobuf<5, jax, matplotlib and
opencv-contrib-python, none of which fit this environment (protobuf 6+ is required by tensorboard,
opentelemetry and googleapis; opencv-contrib-python would overwrite our ``cv2``). deploy/setup.sh
installs it with ``--no-deps``, and this module talks to its C++ bindings directly:

- ``import mediapipe`` runs ``mediapipe/__init__.py``, which imports the drawing helpers (matplotlib)
  and the Tasks API. We register a bare package object for ``mediapipe`` instead, so only the C++
  bindings and the generated ``*_pb2`` modules we name are imported.
- the Python solution layer edits calculator options with protobuf APIs that protobuf 5+ removed
  (``FieldDescriptor.label``, ``MessageFactory.GetPrototype``), and a config proto handed to the
  C++ side loses its option extensions under protobuf 6+. So the graph is loaded from its bundled
  ``.binarypb`` unchanged (its thresholds are mediapipe's defaults), and output protos are parsed
  from their serialized bytes with the generated message class.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import logging
import os
import sys
import types
from functools import lru_cache
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
MEDIAPIPE_VERSION = "0.10.14"


class MediaPipeUnavailable(ImportError):
    pass


@lru_cache(maxsize=1)
def package_root() -> Path:
    """The installed ``mediapipe`` package folder, without running its ``__init__``."""
    spec = importlib.util.find_spec("mediapipe")
    if spec is None or not spec.origin:
        raise MediaPipeUnavailable(
            f"mediapipe is not installed: `pip install --no-deps mediapipe=={MEDIAPIPE_VERSION}` (deploy/setup.sh does)")
    return Path(spec.origin).parent


def _bindings():
    """The C++ bindings and packet helpers, imported under a bare ``mediapipe`` package."""
    root = package_root()
    # absl/glog INFO lines on every graph start: keep warnings and errors (read when the .so loads)
    os.environ.setdefault("GLOG_minloglevel", "1")
    if "mediapipe" not in sys.modules:
        pkg = types.ModuleType("mediapipe")
        pkg.__path__ = [str(root)]
        pkg.__file__ = str(root / "__init__.py")
        pkg.__version__ = MEDIAPIPE_VERSION       # what the wheel's own __init__ would say
        sys.modules["mediapipe"] = pkg
    # the bindings' proto caster probes MessageFactory.GetPrototype (gone in protobuf 5+) and prints
    # the AttributeError once at import; it falls back to serialisation, so the line is only noise
    noise = io.StringIO()
    with contextlib.redirect_stderr(noise):
        from mediapipe.python import packet_creator
        from mediapipe.python._framework_bindings import (_packet_getter, calculator_graph, image_frame,
                                                          resource_util)
    for line in noise.getvalue().splitlines():
        if "GetPrototype" not in line:
            log.warning("mediapipe import: %s", line)
    resource_util.set_resource_dir(str(root.parent))    # graphs name their .tflite files from there
    return types.SimpleNamespace(packet_creator=packet_creator, packet_getter=_packet_getter,
                                 CalculatorGraph=calculator_graph.CalculatorGraph, ImageFormat=image_frame.ImageFormat)


@lru_cache(maxsize=None)
def file_sha256(relpath: str) -> str:
    """sha256 of a file inside the mediapipe package (``modules/pose_landmark/...``)."""
    h = hashlib.sha256()
    with open(package_root() / relpath, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class BundledGraph:
    """One bundled CPU graph, started once with fixed side packets; ``run(image)`` feeds one RGB
    image and returns the packets of the observed output streams (None where the graph emitted
    nothing, e.g. no person found). Not thread-safe: one graph per annotator."""

    def __init__(self, graph_relpath: str, side_packets: dict[str, bool | int], outputs: tuple[str, ...]):
        b = self._b = _bindings()
        path = package_root() / graph_relpath
        if not path.exists():
            raise MediaPipeUnavailable(f"{path} is missing: mediapipe=={MEDIAPIPE_VERSION} bundles it, later releases do not")
        self.graph = b.CalculatorGraph(binary_graph_path=str(path))
        self._outputs: dict[str, object] = {}
        for name in outputs:
            self.graph.observe_output_stream(name, self._keep, True)
        make = {bool: b.packet_creator.create_bool, int: b.packet_creator.create_int}
        self.graph.start_run({k: make[type(v)](v) for k, v in side_packets.items()})
        self.output_names = outputs
        self._timestamp = 0

    def _keep(self, stream: str, packet) -> None:
        self._outputs[stream] = packet

    def run(self, image: np.ndarray) -> dict[str, object | None]:
        b = self._b
        rgb = np.ascontiguousarray(image[..., :3], dtype=np.uint8)
        self._outputs.clear()
        # timestamps must grow; with use_prev_landmarks / smoothing off each image stands alone
        self._timestamp += 1
        packet = b.packet_creator.create_image_frame(rgb, image_format=b.ImageFormat.SRGB)
        self.graph.add_packet_to_input_stream(stream="image", packet=packet.at(self._timestamp))
        self.graph.wait_until_idle()
        return {name: (None if (p := self._outputs.get(name)) is None or p.is_empty() else p)
                for name in self.output_names}

    def proto(self, packet, message_class):
        """Parse a proto packet into ``message_class`` (a generated ``*_pb2`` class)."""
        return message_class.FromString(self._b.packet_getter._get_serialized_proto(packet))

    def close(self) -> None:
        if self.graph is not None:
            with contextlib.suppress(Exception):
                self.graph.close()
            self.graph = None

    def __del__(self):
        self.close()


"""Viewer glue that needs no browser: a new viewer tab opens at a training camera, not inside the scene."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

from helpers import make_model

from distilled3dgs_ns.teacher import TeacherModelConfig


class FakeServer:
    def __init__(self) -> None:
        self.on_connect = []

    def on_client_connect(self, callback):
        self.on_connect.append(callback)
        return callback


def _client():
    return SimpleNamespace(camera=SimpleNamespace(position=(0.0, 0.0, 0.0), wxyz=(1.0, 0.0, 0.0, 0.0)),
                           atomic=contextlib.nullcontext)  # fmt: skip


def test_a_new_tab_opens_at_the_first_training_camera():
    from nerfstudio.viewer.utils import parse_object
    from nerfstudio.viewer.viewer_elements import ViewerControl

    model = make_model(TeacherModelConfig(num_downscales=0), num_points=20)
    controls = [control for _, control in parse_object(model, ViewerControl, "Custom Elements")]
    assert controls, "no ViewerControl for nerfstudio's viewer to set up"
    server = FakeServer()
    frustums = {5: SimpleNamespace(position=(9.0, 8.0, 7.0), wxyz=(0.0, 1.0, 0.0, 0.0)),
                2: SimpleNamespace(position=(1.0, 2.0, 3.0), wxyz=(0.5, 0.5, 0.5, 0.5))}  # fmt: skip
    viewer = SimpleNamespace(viser_server=server, camera_handles={}, control_panel=FakePanel())
    for control in controls:
        control._setup(viewer)
    early = _client()
    for callback in server.on_connect:
        callback(early)  # no training cameras yet: the tab keeps viser's own view
    assert early.camera.position == (0.0, 0.0, 0.0)
    viewer.camera_handles = frustums
    client = _client()
    for callback in server.on_connect:
        callback(client)
    assert client.camera.position == (1.0, 2.0, 3.0) and client.camera.wxyz == (0.5, 0.5, 0.5, 0.5)


class FakePanel:
    """nerfstudio 1.1.5's ControlPanel.update_output_options: the split view defaults to the last output."""

    def __init__(self) -> None:
        self._split_output_render = SimpleNamespace(value=None)

    def update_output_options(self, new_options):
        self._split_output_render.value = new_options[-1]


def test_split_screen_never_defaults_to_the_downsampled_depth():
    from nerfstudio.viewer.utils import parse_object
    from nerfstudio.viewer.viewer_elements import ViewerControl

    model = make_model(TeacherModelConfig(num_downscales=0), num_points=20)
    viewer = SimpleNamespace(viser_server=FakeServer(), camera_handles={}, control_panel=FakePanel())
    for _, control in parse_object(model, ViewerControl, "Custom Elements"):
        control._setup(viewer)
    panel = viewer.control_panel
    panel.update_output_options(["rgb", "depth", "accumulation", "teacher_blend", "gl_z_buf_depth"])
    assert panel._split_output_render.value == "teacher_blend"
    panel.update_output_options(["rgb", "depth", "accumulation", "background", "gl_z_buf_depth"])
    assert panel._split_output_render.value == "depth"

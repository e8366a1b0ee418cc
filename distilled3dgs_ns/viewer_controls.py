"""What our models add to nerfstudio's viewer beyond GUI elements, as ``ViewerControl``s (the viewer sets up every
one it finds in the pipeline, with itself as argument).

- nerfstudio 1.1.5 leaves a new tab at viser's default pose, which for a scene at the origin is inside it (a red blur
  until the user scrolls out): ``StartAtTrainingCamera`` moves each connecting tab to the first training camera's
  frustum, as a click on it would.
- Its split screen defaults to the last output, ``gl_z_buf_depth``, which the viewer downsamples for splats, so
  ticking "Split Screen" kills the tab's render thread (``Sizes of tensors must match``): ``SplitScreenDefault`` makes
  the default a full-size output instead (the teachers' blend where the student has one).
"""

from __future__ import annotations

from typing import Any

from nerfstudio.viewer.viewer_elements import ViewerControl


class StartAtTrainingCamera(ViewerControl):
    """Place each new viewer tab at the lowest-index training camera shown in the viewer."""

    def _setup(self, viewer: Any) -> None:
        super()._setup(viewer)
        self.viser_server.on_client_connect(self.place)

    def place(self, client: Any) -> None:
        """Move ``client``'s camera to the first training camera's frustum (nothing while there is none yet)."""
        handles = getattr(self.viewer, "camera_handles", None) or {}
        if not handles:
            return
        frustum = handles[min(handles)]
        with client.atomic():
            client.camera.position = frustum.position
            client.camera.wxyz = frustum.wxyz


SPLIT_PREFERENCE = ("teacher_blend", "depth")
"""Split-screen default, first present wins; ``gl_z_buf_depth`` is never the default."""


class SplitScreenDefault(ViewerControl):
    """Default the split-screen output to a full-size one (see the module docstring)."""

    def _setup(self, viewer: Any) -> None:
        super()._setup(viewer)
        panel = viewer.control_panel
        update = panel.update_output_options

        def update_output_options(options: list[str]) -> None:
            update(options)
            usable = [name for name in options if name != "gl_z_buf_depth"]
            choice = next((name for name in SPLIT_PREFERENCE if name in usable), usable[-1] if usable else None)
            if choice is not None:
                panel._split_output_render.value = choice

        panel.update_output_options = update_output_options

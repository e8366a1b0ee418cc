"""What our models add to nerfstudio's viewer beyond GUI elements: a new tab opens at a training camera.

nerfstudio 1.1.5 leaves a new tab at viser's default pose, which for a scene at the origin is inside it (a red blur
until the user scrolls out). Models hold a ``StartAtTrainingCamera``; the viewer finds it (it sets up every
``ViewerControl`` of the pipeline) and every connecting tab is moved to the first training camera's frustum, as a
click on that frustum would.
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

"""napari dock widgets (npe2 manifest: ``kt_stardist/napari.yaml``): find kinetochores, and adapt
the model to the user's microscope from points clicked on an image.

Imported only by napari (it imports napari, magicgui and Qt). The work runs in a worker thread
(:func:`napari.qt.threading.create_worker`) so the viewer stays responsive, and TensorFlow in a
child process (:func:`kt_stardist.napari_plugin.in_process`: in napari's own process it crashes
with Mesa's OpenGL); each widget shows the steps in a progress bar and one status line (errors
too, as one line). What runs is in
:mod:`kt_stardist.napari_plugin` (no Qt): :func:`~kt_stardist.napari_plugin.predict_steps`
(the detection ``predict`` runs) and :func:`~kt_stardist.napari_plugin.finetune_steps`
(:func:`kt_stardist.train.finetune`, what ``kt-stardist finetune --from default`` runs).

Layers: data in px, z, y, x (or t, z, y, x); the voxel size (µm) is the image layer's
``scale`` when it is set, else the widget's fields, else 0.3 × 0.13 × 0.13 µm.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from magicgui.widgets import (CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label, LineEdit, ProgressBar,
                              PushButton, SpinBox)
from napari.layers import Image, Points
from napari.qt.threading import create_worker
from psygnal import Signal

from kt_stardist import napari_plugin as plugin
from kt_stardist.settings import FinetuneSettings, PipelineSettings, replace

__all__ = ["PredictWidget", "FinetuneWidget", "MODELS", "SHIPPED"]

#: the model choice meaning "the shipped model" (``load_model(None)``)
SHIPPED = "shipped model (kt-default)"


class ModelList:
    """Model folders known in this napari session (finetuned here, or picked), shared by every
    predict widget: ``added`` is emitted with the folder (str) when one is added."""

    added = Signal(str)

    def __init__(self):
        self.folders: list[str] = []

    def add(self, folder) -> str:
        """Check ``folder`` (:func:`kt_stardist.model.check_model_folder`), add it, return it as str."""
        from kt_stardist.model import check_model_folder

        folder = str(check_model_folder(Path(folder).expanduser().resolve()))
        if folder not in self.folders:
            self.folders.append(folder)
        self.added.emit(folder)
        return folder


MODELS = ModelList()


def _layer_choices(viewer, kind):
    def choices(widget=None):
        return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, kind)]
    return choices


class _Job(Container):
    """A form with a run button, a progress bar and a status line; runs one generator of
    ``(done, total, message)`` steps at a time in a worker thread."""

    run_label = "Run"

    def __init__(self, napari_viewer, fields):
        self.viewer = napari_viewer
        self.run_button = PushButton(text=self.run_label)
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.status = Label(value="")
        super().__init__(widgets=[*fields, self.run_button, self.progress, self.status])
        self.run_button.changed.connect(self.run)
        self.worker = None
        self.busy = False
        self.error = None
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self._layers_changed)
        MODELS.added.connect(self._model_added)

    def _alive(self, refresh) -> bool:
        """Run ``refresh()``; False (and this widget unhooked) once its Qt widget is deleted."""
        try:
            refresh()
            return True
        except RuntimeError:  # wrapped C/C++ object has been deleted: the dock was closed
            MODELS.added.disconnect(self._model_added)
            for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
                event.disconnect(self._layers_changed)
            return False

    def _layers_changed(self, event=None):
        self._alive(self.reset_choices)

    def _model_added(self, folder):
        self._alive(self.reset_choices)

    def _image_field(self):
        return ComboBox(label="image", choices=_layer_choices(self.viewer, Image))

    def _voxel_fields(self):
        opts = dict(min=0.0, max=10.0, step=0.01, value=0.0)
        return (FloatSpinBox(label="voxel z (µm)", tooltip="0: the image layer's scale, else 0.3", **opts),
                FloatSpinBox(label="voxel y, x (µm)", tooltip="0: the image layer's scale, else 0.13", **opts))

    def _image(self, layer, vz, vyx):
        from kt_stardist.errors import InputError

        if layer is None:
            raise InputError("select an image layer")
        vs = plugin.layer_voxel_size_um(layer.scale, vz.value, vyx.value)
        return plugin.layer_image(layer.data, vs, layer.name)

    def run(self, *_):
        """Start the job in a worker thread (no-op while one runs); returns the worker or None."""
        if self.busy:
            return None
        self.error = None
        try:
            steps, on_done = self._job()
        except Exception as exc:  # bad input: one line, nothing started
            self._failed(exc)
            return None
        worker = create_worker(lambda: (yield from steps), _start_thread=False)
        worker.yielded.connect(self._step)
        worker.returned.connect(self._complete)
        worker.returned.connect(on_done)
        worker.errored.connect(self._failed)
        worker.finished.connect(self._finished)
        self.worker, self.busy = worker, True
        self.run_button.enabled = False
        self.progress.value = 0
        worker.start()
        return worker

    def _job(self):
        """``(generator of steps, callback for its return value)``; raises on bad input."""
        raise NotImplementedError

    def _step(self, step):
        done, total, message = step
        self.progress.max = max(1, int(total))
        self.progress.value = min(int(done), self.progress.max)
        self.status.value = message

    def _complete(self, _result):
        self.progress.value = self.progress.max

    def _failed(self, exc):
        from napari.utils.notifications import show_error

        self.error = exc
        self.status.value = f"error: {exc}"
        show_error(f"kt-stardist: {exc}")

    def _finished(self):
        self.busy = False
        self.run_button.enabled = True


class PredictWidget(_Job):
    """Find kinetochores in an image layer; adds a points layer ``<image> kinetochores`` (px,
    the image's scale and translate), with ``prob`` (and pair/track ids when asked)."""

    run_label = "Find kinetochores"

    def __init__(self, napari_viewer):
        self.image = None
        self.model = ComboBox(label="model", choices=self._model_choices)
        self.model_folder = FileEdit(label="other model folder", mode="d", value="",
                                     tooltip="a model folder (kt-stardist finetune); added to the list")
        self.voxel_z, self.voxel_yx = self._voxel_fields()
        self.pairs = CheckBox(text="sister pairs", value=False)
        self.tracks = CheckBox(text="tracks over time (time-lapses)", value=True,
                               tooltip="link a time-lapse's points over frames and recover spots a track "
                                       "missed for 1-2 frames, as `kt-stardist predict` does by default")
        self.settings = PipelineSettings()
        fields = [self.model, self.model_folder, self.voxel_z, self.voxel_yx, self.pairs, self.tracks]
        super().__init__(napari_viewer, fields)
        self.image = self._image_field()
        self.insert(0, self.image)
        self.model_folder.changed.connect(self._add_folder)

    @staticmethod
    def _model_choices(widget=None):
        return [(SHIPPED, "")] + [(f"{Path(f).name} ({f})", f) for f in MODELS.folders]

    def _model_added(self, folder):
        def select():
            self.model.reset_choices()
            self.model.value = folder
        self._alive(select)

    def _add_folder(self, value):
        if value is None or str(value) in ("", "."):
            return
        try:
            MODELS.add(value)
        except Exception as exc:
            self._failed(exc)

    def _job(self):
        layer = self.image.value
        img = self._image(layer, self.voxel_z, self.voxel_yx)
        # checked: predict's default (tracks for time-lapses only); unchecked: none
        settings = replace(self.settings, pairs=self.pairs.value, tracks=None if self.tracks.value else False)

        def done(result):
            self._add_points(layer, *result)

        return plugin.in_process(plugin.predict_job, self.model.value, img, settings), done

    def _add_points(self, layer, df, warnings):
        if np.asarray(layer.data).ndim == 3 and "t" in df.columns:
            df = df.drop(columns="t")
        data, meta, _ = plugin.points_layers(df, name=f"{layer.name} kinetochores")[0]
        nd = data.shape[1]
        meta.update(scale=tuple(layer.scale)[-nd:], translate=tuple(layer.translate)[-nd:])
        if meta["name"] in self.viewer.layers:
            self.viewer.layers.remove(meta["name"])
        self.viewer.add_points(data, **meta)
        self.status.value = f"{len(df)} kinetochores" + "".join(f"; {w}" for w in warnings)


class FinetuneWidget(_Job):
    """Adapt the model to your microscope: from an image layer and a points layer with the
    kinetochores you clicked on it, finetune (the shipped model or a chosen one) for a few
    epochs, save the new model in ``folder/name`` and offer it in the predict widget."""

    run_label = "Train"

    def __init__(self, napari_viewer):
        self.points = ComboBox(label="points", choices=_layer_choices(napari_viewer, Points),
                               tooltip="the kinetochores you clicked on the image (a points layer)")
        self.voxel_z, self.voxel_yx = self._voxel_fields()
        self.start = ComboBox(label="start from", choices=PredictWidget._model_choices)
        self.folder = FileEdit(label="save in folder", mode="d", value=str(Path.home() / "kt-stardist-models"))
        self.model_name = LineEdit(label="model name", value="kt-finetuned")
        defaults = FinetuneSettings()
        self.epochs = SpinBox(label="epochs", min=1, max=1000, value=10)
        self.steps = SpinBox(label="steps per epoch", min=1, max=10000, value=20)
        self.simulate = SpinBox(label="simulated volumes", min=0, max=10000, value=defaults.simulation.n,
                                tooltip="simulated volumes mixed in (keeps what the model knows; slower)")
        self.settings = defaults
        fields = [self.points, self.voxel_z, self.voxel_yx, self.start, self.folder, self.model_name, self.epochs,
                  self.steps, self.simulate]
        super().__init__(napari_viewer, fields)
        self.image = self._image_field()
        self.insert(0, self.image)

    def out_folder(self) -> Path:
        """The model folder to write: ``folder/name``."""
        from kt_stardist.errors import InputError

        name = self.model_name.value.strip()
        if not name or Path(name).name != name:
            raise InputError(f"model name {name!r}: give a plain folder name")
        return Path(self.folder.value).expanduser() / name

    def _job(self):
        from kt_stardist.errors import InputError

        layer, pts = self.image.value, self.points.value
        img = self._image(layer, self.voxel_z, self.voxel_yx)
        if pts is None:
            raise InputError("select the points layer with the kinetochores you clicked")
        df = plugin.points_in_image_px(pts.data, pts.scale, pts.translate, layer.scale, layer.translate,
                                       np.shape(layer.data), pts.name)
        settings = replace(self.settings, train__epochs=self.epochs.value,
                           train__steps_per_epoch=self.steps.value, simulation__n=self.simulate.value)
        out = self.out_folder()
        if (out / "config.json").exists():
            raise InputError(f"{out}: already holds a model; choose another name or folder")
        steps = plugin.in_process(plugin.finetune_steps, out, img, df, settings, self.start.value or None)
        return steps, self._trained

    def _trained(self, result):
        out, report = result
        MODELS.add(out)
        th = report["thresholds"]
        self.status.value = (f"model saved in {out} (validation F1 {th['f1']:.3f}, prob {th['prob']:.2f}, "
                             f"{report['steps']} steps, {report['seconds']:.0f} s); choose it in Find kinetochores")

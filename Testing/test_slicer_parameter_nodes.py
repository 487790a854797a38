"""The modules' parameter nodes through Slicer 5.10.0's real ``parameterNodeWrapper`` on the slicer-core scene.

``CACIdentifier.py``, ``CACTrainer.py`` and ``CACAnnotator.py`` are loaded by path, as Slicer loads
them, with Slicer's own ``slicer.parameterNodeWrapper``,
``slicer.ScriptedLoadableModule``, ``slicer.util`` and ``slicer.i18n`` (see
slicer_python.py).  Every field is set, node fields are set to None, values out
of range are refused, and the scene is saved and loaded again.  This is what
the panel does in ``setup()`` -> ``initializeParameterNode()`` and on every
``enter()``; a node field typed without None broke exactly there.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed")

import slicer_python  # noqa: E402
from CACIdentifierLib import slicercore  # noqa: E402

pytestmark = pytest.mark.skipif(
    not slicer_python.available(), reason=f"Slicer 5.10.0's Python files not found at {slicer_python.SLICER_PYTHON}"
)
ROOT = slicer_python.ROOT


@pytest.fixture
def slicer_app():
    with slicer_python.slicer_5_10(slicercore.new_scene()) as slicer:
        yield slicer


def load(module: str):
    return slicer_python.load_module_script(ROOT / module / f"{module}.py")


def save_and_reload(slicer, tmp_path: Path):
    """Save ``slicer.mrmlScene`` as a .mrml file, load it into a new scene and make that the application's."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "scene.mrml"
    scene = slicer.mrmlScene
    scene.SetURL(str(path))
    assert scene.Commit(), "the scene could not be saved"
    new = slicercore.new_scene()
    new.SetURL(str(path))
    assert new.Import(), "the saved scene could not be loaded"
    slicer.mrmlScene = new
    return new


def add(slicer, cls: str, name: str):
    return slicer.mrmlScene.AddNewNodeByClass(cls, name)


def node_ids(value):
    """Nodes by ID (a reloaded scene has new node objects); other values as they are."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ObservedList":
        return [node_ids(v) for v in value]
    return value.GetID() if hasattr(value, "GetID") else value


def check_round_trip(slicer, tmp_path, module, logic_class, values):
    """Set ``values`` on a fresh parameter node, save and reload the scene, read them back."""
    logic = getattr(module, logic_class)()
    parameters = logic.getParameterNode()
    for name, value in values.items():
        setattr(parameters, name, value)
    for name, value in values.items():
        assert node_ids(getattr(parameters, name)) == node_ids(value), name
    save_and_reload(slicer, tmp_path)
    reloaded = logic.getParameterNode()
    assert reloaded.parameterNode is not parameters.parameterNode
    for name, value in values.items():
        assert node_ids(getattr(reloaded, name)) == node_ids(value), f"{name} after reloading the scene"
    return reloaded


# --------------------------------------------------------------------------- CAC Identifier


def test_identifier_parameter_node_defaults(slicer_app):
    module = load("CACIdentifier")
    parameters = module.CACIdentifierLogic().getParameterNode()
    # What the panel reads in initializeParameterNode() before anything is chosen.
    assert parameters.inputNode is None and parameters.outputSegmentation is None and parameters.outputTable is None
    assert parameters.annotationNodes == []
    # -1: the refinement settings of the model card (the shipped model's operating point sets its island size).
    assert (parameters.device, parameters.sigma, parameters.minIslandPx) == ("auto", -1.0, -1)
    assert (parameters.threshold, parameters.onsetFrame) == (-1.0, -1)
    # The CLI's defaults: no temporal filter; a card's cine gate applies; static spots' ROIs removed
    # (`cac identify` without flags).
    assert (parameters.temporal, parameters.cineGate, parameters.staticFilter) == (False, True, True)
    assert parameters.roiPatches == 0  # "model's": the card's roi_patches
    assert str(parameters.modelPath) in ("", ".")
    # A singleton: the module finds the same node again (the panel calls this on every enter()).
    assert module.CACIdentifierLogic().getParameterNode().parameterNode is parameters.parameterNode


def test_identifier_every_field_round_trips(slicer_app, tmp_path):
    module = load("CACIdentifier")
    fields = set(module.CACIdentifierParameterNode.allParameters)
    sequence = add(slicer_app, "vtkMRMLSequenceNode", "cine sequence")
    volume = add(slicer_app, "vtkMRMLScalarVolumeNode", "cine frames")
    annotations = [add(slicer_app, "vtkMRMLSegmentationNode", f"annotator {i}") for i in (1, 2)]
    output = add(slicer_app, "vtkMRMLSegmentationNode", "CAC ROI")
    table = add(slicer_app, "vtkMRMLTableNode", "CAC results")
    values = {
        "inputNode": sequence,
        "annotationNodes": annotations,
        "modelPath": tmp_path / "model.safetensors",
        "device": "cuda",
        "sigma": 2.5,
        "minIslandPx": 250,
        "threshold": 0.35,
        "onsetFrame": 7,
        "temporal": True,
        "cineGate": False,
        "staticFilter": False,
        "roiPatches": 2,
        "outputSegmentation": output,
        "outputTable": table,
    }
    assert set(values) == fields, "a parameter-node field is not covered by this test"
    check_round_trip(slicer_app, tmp_path / "a", module, "CACIdentifierLogic", values)

    # The other input type, and every node field back to None (the panel's "None" entry, a deleted node).
    values.update(inputNode=volume, annotationNodes=[], outputSegmentation=None, outputTable=None)
    check_round_trip(slicer_app, tmp_path / "b", module, "CACIdentifierLogic", values)
    values["inputNode"] = None
    check_round_trip(slicer_app, tmp_path / "c", module, "CACIdentifierLogic", values)


def test_identifier_refuses_values_out_of_range(slicer_app):
    module = load("CACIdentifier")
    parameters = module.CACIdentifierLogic().getParameterNode()
    for name, bad in (("device", "tpu"), ("sigma", 51.0), ("threshold", 1.5), ("onsetFrame", -2),
                      ("minIslandPx", -2), ("sigma", -1.5), ("threshold", -2.0), ("roiPatches", 6),
                      ("roiPatches", -1)):
        with pytest.raises(ValueError):
            setattr(parameters, name, bad)
    with pytest.raises((TypeError, ValueError)):
        parameters.inputNode = add(slicer_app, "vtkMRMLTableNode", "not a cine")


# --------------------------------------------------------------------------- CAC Trainer


def test_trainer_every_field_round_trips(slicer_app, tmp_path):
    module = load("CACTrainer")
    fields = set(module.CACTrainerParameterNode.allParameters)
    parameters = module.CACTrainerLogic().getParameterNode()
    assert parameters.curvesTable is None and parameters.curvesChart is None
    assert not module.CACTrainerLogic.isSet(parameters.datasetDir)  # unset path: Generate stays disabled
    table = add(slicer_app, "vtkMRMLTableNode", "CAC training curves")
    chart = add(slicer_app, "vtkMRMLPlotChartNode", "CAC training curves chart")
    values = {
        "datasetDir": tmp_path / "dataset",
        "phantomPatients": 5,
        "phantomAcquisitions": 2,
        "phantomRandomize": False,
        "seed": 42,
        "outputModelPath": tmp_path / "model.safetensors",
        "cvMode": "acquisition",
        "fold": 3,
        "recipe": "paper",
        "epochs1": 4,
        "epochs2": 6,
        "phantomPool": 60,
        "refreshPatients": 10,
        "residualChannel": True,
        "counterfactualTwins": True,
        "device": "cpu",
        "initModelPath": tmp_path / "base.safetensors",
        "calibrationModelPath": tmp_path / "trained.safetensors",
        "calibrationDataDir": tmp_path / "held-out",
        "calibrationMethod": "temperature",
        "targetSensitivity": 0.9,
        "calibratedModelPath": tmp_path / "calibrated.safetensors",
        "curvesTable": table,
        "curvesChart": chart,
    }
    assert set(values) == fields, "a parameter-node field is not covered by this test"
    reloaded = check_round_trip(slicer_app, tmp_path, module, "CACTrainerLogic", values)
    assert module.CACTrainerLogic.isSet(reloaded.datasetDir)

    values.update(curvesTable=None, curvesChart=None, cvMode="none", fold=-1)
    check_round_trip(slicer_app, tmp_path / "b", module, "CACTrainerLogic", values)
    with pytest.raises(ValueError):
        reloaded.cvMode = "leave-one-out"
    with pytest.raises(ValueError):
        reloaded.targetSensitivity = 1.5
    with pytest.raises(ValueError):
        reloaded.calibrationMethod = "isotonic"
    with pytest.raises(ValueError):
        reloaded.recipe = "fast"
    with pytest.raises(ValueError):
        reloaded.epochs1 = -1
    fresh = module.CACTrainerParameterNode(slicer_app.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode"))
    # A new panel trains the default recipe for the recipe's epochs on a dataset folder.
    assert (fresh.recipe, fresh.epochs1, fresh.epochs2, fresh.phantomPool) == ("default", 0, 0, 0)
    assert fresh.phantomRandomize  # the phantom the default model trains on


# --------------------------------------------------------------------------- CAC Annotator


def test_trainer_curve_nodes_are_reused_per_model(slicer_app, tmp_path, monkeypatch):
    """Training one model again empties its curves; another model gets its own; deleted nodes are remade."""
    module = load("CACTrainer")
    monkeypatch.setattr(module, "_", lambda text: text)  # translation needs slicer.app (the application)
    logic, scene = module.CACTrainerLogic(), slicer_app.mrmlScene
    parameters = logic.getParameterNode()
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    table, chart = logic.curveNodes(a)
    logic.appendCurveRow(table, {"event": "epoch", "stage": 1, "epoch": 1, "epochs": 1, "train_loss": 0.5})
    parameters.curvesTable, parameters.curvesChart = table, chart
    counts = [scene.GetNumberOfNodesByClass(c) for c in ("vtkMRMLTableNode", "vtkMRMLPlotChartNode")]
    again = logic.curveNodes(a, parameters.curvesTable, parameters.curvesChart)
    assert again == (table, chart) and table.GetNumberOfRows() == 0
    assert [scene.GetNumberOfNodesByClass(c) for c in ("vtkMRMLTableNode", "vtkMRMLPlotChartNode")] == counts
    other, other_chart = logic.curveNodes(b, table, chart)
    assert other is not table and other_chart is not chart and "b.safetensors" in other.GetName()
    # A table of an older version (fewer columns, e.g. a saved scene) is not reused for a resumed training:
    # its rows could not take the new columns.
    old = table.GetTable()
    old.RemoveColumnByName("val_auc_within_position")
    kept, _ = logic.curveNodes(a, table, chart, keepRows=True)
    assert kept is not table
    logic.appendCurveRow(kept, {"event": "epoch", "stage": 1, "epoch": 2, "epochs": 2, "train_loss": 0.4,
                                "val_auc_within_position": 0.7})
    scene.RemoveNode(table)
    remade, _ = logic.curveNodes(a, table, chart)
    assert remade is not table and scene.IsNodePresent(remade)


def test_annotator_every_field_round_trips(slicer_app, tmp_path):
    module = load("CACAnnotator")
    fields = set(module.CACAnnotatorParameterNode.allParameters)
    parameters = module.CACAnnotatorLogic().getParameterNode()
    assert parameters.cineSequence is None and parameters.frameStackVolume is None
    values = {
        "cineSequence": add(slicer_app, "vtkMRMLSequenceNode", "cine sequence"),
        "frameStackVolume": add(slicer_app, "vtkMRMLScalarVolumeNode", "cine frames"),
        "onsetFrame": 9,
        "annotatorCount": 2,
        "annotationsPath": tmp_path / "annotations",
        "cinePath": tmp_path / "run.dcm",
        "datasetPath": tmp_path / "dataset",
        "aiSegmentation": add(slicer_app, "vtkMRMLSegmentationNode", "CAC ROI"),
        "worstFirst": True,
    }
    assert set(values) == fields, "a parameter-node field is not covered by this test"
    check_round_trip(slicer_app, tmp_path / "a", module, "CACAnnotatorLogic", values)
    values.update(cineSequence=None, frameStackVolume=None, aiSegmentation=None, worstFirst=False)
    check_round_trip(slicer_app, tmp_path / "b", module, "CACAnnotatorLogic", values)
    with pytest.raises(ValueError):
        module.CACAnnotatorLogic().getParameterNode().annotatorCount = 10


def test_identifier_reload_drops_every_package_built_on_its_lib(slicer_app):
    """Developer Reload of CAC Identifier drops CACIdentifierLib and every package that imports it: one kept would
    hold the old CacError, and its panel would show user errors as bugs."""
    import re

    module = load("CACIdentifier")
    importing = set()
    for init in ROOT.glob("*/*/__init__.py"):
        package = init.parent
        if any(re.search(r"^\s*(from|import) CACIdentifierLib", path.read_text(), re.M)
               for path in package.rglob("*.py")):
            importing.add(package.name)
    assert {"CACAnnotatorLib", "CACTrainerLib", "cac"} <= importing
    assert importing | {"CACIdentifierLib"} <= set(module.RELOADED_WITH_IDENTIFIER)


def test_annotator_export_asks_for_the_patient_and_for_replacing(slicer_app, tmp_path, monkeypatch):
    """The panel's Export of a cine without a PatientID (a .seq.nrrd) names the panel's Patient ID field, not a
    command-line flag; with the ID it adds the cine, pseudonymised; a second Export of the same cine raises
    AlreadyInDataset with the acquisition's id (the panel asks), and replaces it with overwrite."""
    import json

    import numpy as np
    from CACIdentifierLib import mrml, nrrd_io
    from CACIdentifierLib.errors import CacError
    from CACTrainerLib.dataset_builder import AlreadyInDataset, NeedsPatient
    from scene_helpers import synthetic_cine

    module = load("CACAnnotator")
    monkeypatch.setattr(module, "_", lambda text: text)
    cine = synthetic_cine(n=12, rows=48, cols=48)
    cine_path = nrrd_io.write_seq_nrrd(cine, tmp_path / "run.seq.nrrd")
    assert not load_identifiers(cine_path)
    volume = mrml.cine_to_frame_stack_volume(slicer_app.mrmlScene, cine, "frames")
    nodes = module.CACAnnotatorLogic().createAnnotators(volume, 2)
    calcium = np.zeros(cine.frames.shape, bool)
    calcium[2, 10:16, 20:26] = True
    for node in nodes:
        node.GetSegmentation().RemoveAllSegments()
        mrml._fill_segmentation(node, {"calcium": calcium}, None, {}, mrml.frame_stack_geometry(volume))
    logic, dataset = module.CACAnnotatorLogic(), tmp_path / "dataset"
    with pytest.raises(CacError, match="no PatientID: type the patient's ID in 'Patient ID'") as info:
        logic.exportToDataset(dataset, cine_path, nodes, volume, 6)
    assert not isinstance(info.value, NeedsPatient) and "--patient" not in str(info.value)
    assert not dataset.exists()  # a failed first export leaves no half-built dataset
    added = logic.exportToDataset(dataset, cine_path, nodes, volume, 6, patient="  patient 7 ")
    assert added.calcium_frames == 1
    manifest = (dataset / "manifest.json").read_text()
    assert "patient 7" not in manifest and json.loads(manifest)["acquisitions"][0]["id"] == added.id
    with pytest.raises(AlreadyInDataset) as again:
        logic.exportToDataset(dataset, cine_path, nodes, volume, 6, patient="patient 7")
    assert again.value.acquisition == added.id and isinstance(again.value, CacError)
    calcium[5, 30:34, 30:34] = True
    for node in nodes:
        node.GetSegmentation().RemoveAllSegments()
        mrml._fill_segmentation(node, {"calcium": calcium}, None, {}, mrml.frame_stack_geometry(volume))
    replaced = logic.exportToDataset(dataset, cine_path, nodes, volume, 6, patient="patient 7", overwrite=True)
    assert replaced.id == added.id and replaced.calcium_frames == 2
    assert len(json.loads((dataset / "manifest.json").read_text())["acquisitions"]) == 1


def load_identifiers(path):
    from CACIdentifierLib.cine_io import load_cine

    return {k: v for k, v in load_cine(path).identifiers.items() if k == "PatientID" and v}


def test_identifier_scene_saved_with_another_installs_shipped_model(slicer_app, tmp_path, monkeypatch):
    """A scene records the shipped model's absolute path; elsewhere (another computer, an updated extension)
    that path is gone and this install's shipped model is meant.  A missing model of the user's own is an error."""
    from CACIdentifierLib.errors import CacError
    from CACIdentifierLib.resources import find_default_model

    monkeypatch.delenv("CAC_MODEL", raising=False)
    module = load("CACIdentifier")
    monkeypatch.setattr(module, "_", lambda text: text)
    logic = module.CACIdentifierLogic()
    shipped = find_default_model()
    if shipped is None:
        pytest.skip("no shipped model in this checkout")
    elsewhere = tmp_path / "Slicer-5.10.0" / "CACIdentifier" / "Resources" / "Models" / shipped.name
    assert logic._modelPath(elsewhere) == shipped
    windows = "C:\\Program Files\\Slicer\\CACIdentifier\\Resources\\Models\\" + shipped.name
    assert logic._modelPath(windows) == shipped  # a scene saved on Windows
    assert logic._modelPath(shipped) == shipped
    with pytest.raises(CacError, match="not found"):
        logic._modelPath(tmp_path / "models" / shipped.name)


def test_annotator_asks_only_for_the_packages_it_needs(slicer_app, monkeypatch):
    """CAC Annotator installs through CAC Identifier's installer what its actions import (pynrrd, slicerio,
    pylibjpeg, scikit-image for the export...), never torch; CAC Trainer asks for everything."""
    import importlib.util

    identifier, annotator = load("CACIdentifier"), load("CACAnnotator")
    required = {name for name, *_ in identifier.REQUIRED_PACKAGES}
    assert set(annotator.ANNOTATOR_PACKAGES) <= required and "torch" not in annotator.ANNOTATOR_PACKAGES
    real = importlib.util.find_spec
    absent = {"nrrd", "torch"}
    monkeypatch.setattr(identifier.importlib.util, "find_spec", lambda name, *a: None if name in absent else real(name, *a))
    logic = identifier.CACIdentifierLogic
    assert [name for name, _ in logic.missingPackages(annotator.ANNOTATOR_PACKAGES)] == ["nrrd"]
    assert {name for name, _ in logic.missingPackages()} == absent
    # The Annotator's Logic goes through CAC Identifier's installer with its own list.
    calls = []

    class Installer:
        def ensurePythonPackages(self, askConfirmation=True, names=None, moduleTitle=None):
            calls.append((names, moduleTitle))
            return True

    monkeypatch.setattr(annotator, "_", lambda text: text)
    monkeypatch.setattr(annotator.slicer.util, "getModuleLogic",
                        lambda name: Installer() if name == "CACIdentifier" else None)
    assert annotator.CACAnnotatorLogic().ensurePythonPackages()
    assert calls == [(annotator.ANNOTATOR_PACKAGES, "CAC Annotator")]


def test_trainer_offers_to_resume_only_the_fold_it_would_run(slicer_app, tmp_path):
    import json

    from CACTrainerLib.checkpoint_io import CHECKPOINT, CHECKPOINT_JSON

    logic = load("CACTrainer").CACTrainerLogic
    for k in (0, 2):
        (tmp_path / f"fold_{k}").mkdir()
        (tmp_path / f"fold_{k}" / CHECKPOINT).write_bytes(b"x")
        (tmp_path / f"fold_{k}" / CHECKPOINT_JSON).write_text(json.dumps({"stage": 1, "epochs_done": 1}))
    (tmp_path / "fold_2.json").write_text("{}")  # fold 2 is done; fold 0 was cancelled
    assert [r["run_dir"].name for r in logic.unfinishedTraining(tmp_path, "patient", -1)] == ["fold_0"]
    assert logic.unfinishedTraining(tmp_path, "patient", 2) == []  # Train on fold 2: nothing to resume there
    assert [r["run_dir"].name for r in logic.unfinishedTraining(tmp_path, "patient", 0)] == ["fold_0"]


def test_trainer_offers_resume_only_on_the_checkpoints_data(slicer_app, tmp_path):
    """The resume question comes only where cac train would accept the resume: a checkpoint made on another
    dataset, cross-validation mode or phantom pool is marked same_data False (the panel offers to start over)."""
    import json

    from CACTrainerLib.checkpoint_io import CHECKPOINT, CHECKPOINT_JSON, data_source

    logic = load("CACTrainer").CACTrainerLogic
    dataset = tmp_path / "ds"
    dataset.mkdir()
    (dataset / "manifest.json").write_text(json.dumps({"acquisitions": [{"id": "P-a-A01", "n_frames": 40}]}))
    out = tmp_path / "cv"
    (out / "fold_0").mkdir(parents=True)
    (out / "fold_0" / CHECKPOINT).write_bytes(b"x")
    (out / "fold_0" / CHECKPOINT_JSON).write_text(json.dumps(
        {"stage": 1, "epochs_done": 2, "source": data_source(dataset, cv="patient")}))

    def same(datasetDir, pool, cv):
        source = logic.trainingSource(datasetDir, pool, 0, 0, cv)
        return [r["same_data"] for r in logic.unfinishedTraining(out, cv, 0, source)]

    assert same(dataset, 0, "patient") == [True]
    assert same(dataset, 0, "acquisition") == [False]
    assert same(tmp_path / "other", 0, "patient") == [False]
    assert same(dataset, 20, "patient") == [False]
    (out / "fold_0" / CHECKPOINT_JSON).write_text(json.dumps({"stage": 1, "epochs_done": 2}))  # an older checkpoint
    assert same(dataset, 0, "patient") == [None]
    # A stream with counterfactual twins: resumable only with the twins box as the run had it.
    stream = tmp_path / "stream.safetensors"
    run = stream.with_name(stream.stem + ".run")  # cac train's run folder without --run-dir
    run.mkdir()
    (run / CHECKPOINT).write_bytes(b"x")
    (run / CHECKPOINT_JSON).write_text(json.dumps({"stage": 1, "epochs_done": 3, "source": data_source(
        phantom_pool=60, refresh_patients=10, seed=4, twins=True)}))

    def same_stream(twins):
        source = logic.trainingSource("", 60, 10, 4, "none", twins)
        return [r["same_data"] for r in logic.unfinishedTraining(stream, "none", -1, source)]

    assert same_stream(True) == [True] and same_stream(False) == [False]


def test_trainer_says_which_output_a_cross_validation_mode_needs(slicer_app, tmp_path, capsys):
    """`cac train --cv patient --out m.safetensors` is refused (it made a folder named like a model file);
    the panel says so before it starts the child process, and for the reverse mistake too."""
    logic = load("CACTrainer").CACTrainerLogic
    assert logic.outputNeeded(tmp_path / "m.safetensors", "none") is None
    assert logic.outputNeeded(tmp_path / "runs", "patient") is None
    assert logic.outputNeeded(tmp_path / "m.safetensors", "patient") == "run folder"
    assert logic.outputNeeded(tmp_path / "m.SafeTensors", "acquisition") == "run folder"
    assert logic.outputNeeded(tmp_path / "runs", "none") == "model file"
    # the whole check the panel runs before it starts training
    model = tmp_path / "m.safetensors"
    assert logic.trainingProblem(tmp_path, 8, 0, "none", model) is None
    assert logic.trainingProblem(tmp_path, 8, 2, "none", model) is None
    assert logic.trainingProblem(tmp_path, 8, 2, "patient", tmp_path / "runs") == "new patients need the phantom"
    assert logic.trainingProblem(tmp_path, 0, 2, "none", model) == "new patients need the phantom"
    assert logic.trainingProblem(tmp_path, 8, 0, "none", model, True) == "twins need new patients"
    assert logic.trainingProblem(tmp_path, 8, 2, "none", model, True) is None
    assert logic.trainingProblem(tmp_path, 0, 0, "none", model) == "no manifest"
    (tmp_path / "manifest.json").write_text("{}")
    assert logic.trainingProblem(tmp_path, 0, 0, "none", model) is None
    assert logic.trainingProblem(tmp_path, 0, 0, "patient", model) == "run folder"
    assert logic.trainingProblem(tmp_path, 0, 0, "none", tmp_path / "runs") == "model file"
    # and the CLI agrees: the same pair is refused there
    from cac.cli import main

    assert main(["train", "--phantom-pool", "4", "--cv", "patient", "--out", str(tmp_path / "m.safetensors")]) == 2
    assert "is a run folder" in capsys.readouterr().err and not (tmp_path / "m.safetensors").exists()

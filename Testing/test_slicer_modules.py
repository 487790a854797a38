"""Static checks of the Slicer modules (the Slicer application cannot run here).

The module scripts, their .ui panels and the CMake files must agree with one
another: every ``self.ui.<name>`` exists in the .ui, every parameter-node
field bound in the .ui exists with a type its widget can show, every widget
class is one Slicer can create, CMake lists every Lib file and resource, and
the training command the trainer panel builds is accepted by the real
``cac`` parser.
"""

from __future__ import annotations

import ast
import math
import os
import py_compile
import re
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = {
    "CACIdentifier": ROOT / "CACIdentifier",
    "CACTrainer": ROOT / "CACTrainer",
    "CACAnnotator": ROOT / "CACAnnotator",
}
WIDGET_CLASS = re.compile(r"^(Q[A-Z]\w*|ctk[A-Z]\w*|qMRML\w+|qSlicer\w+)$")


def script_path(module: str) -> Path:
    return MODULES[module] / f"{module}.py"


def ui_path(module: str) -> Path:
    return MODULES[module] / "Resources" / "UI" / f"{module}.ui"


def parse_script(module: str) -> ast.Module:
    return ast.parse(script_path(module).read_text(), filename=str(script_path(module)))


def ui_widgets(module: str) -> dict[str, ET.Element]:
    tree = ET.parse(ui_path(module))
    widgets = {}
    for w in tree.getroot().iter("widget"):
        name = w.get("name")
        assert name not in widgets, f"{module}.ui: duplicate objectName {name}"
        widgets[name] = w
    return widgets


def widget_property(widget: ET.Element, name: str):
    for p in widget.findall("property"):
        if p.get("name") == name:
            child = p[0]
            if child.tag == "stringlist":
                return [s.text for s in child.findall("string")]
            return child.text
    return None


def parameter_fields(module: str) -> dict[str, str]:
    """Field name -> annotation source of the @parameterNodeWrapper class in the module script."""
    tree = parse_script(module)
    source = script_path(module).read_text()
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
            getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list
        ):
            return {
                stmt.target.id: ast.get_source_segment(source, stmt.annotation)
                for stmt in node.body
                if isinstance(stmt, ast.AnnAssign)
            }
    raise AssertionError(f"{module}.py has no @parameterNodeWrapper class")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_ui_parses_and_uses_known_widget_classes(module):
    root = ET.parse(ui_path(module)).getroot()
    assert root.tag == "ui" and root.find("class").text == module
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == module
    declared = {c.find("class").text for c in root.iter("customwidget")}
    for name, w in ui_widgets(module).items():
        cls = w.get("class")
        assert WIDGET_CLASS.match(cls), f"{module}.ui: {name} has class {cls}, not a Qt/CTK/qMRML class"
        if not cls.startswith("Q"):
            assert cls in declared, f"{module}.ui: custom widget {cls} is not declared in <customwidgets>"
    for layout in root.iter("layout"):
        assert layout.get("class").startswith("Q")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_self_ui_name_exists_in_the_ui(module):
    used = set()
    for node in ast.walk(parse_script(module)):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "ui"
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "self"
        ):
            used.add(node.attr)
    assert used, f"{module}.py uses no self.ui widgets"
    missing = used - set(ui_widgets(module))
    assert not missing, f"{module}.py uses self.ui.{sorted(missing)} that {module}.ui does not define"


# The widget class each parameter type can be bound to by the parameter node wrapper.
def _compatible(cls: str, annotation: str, widget: ET.Element) -> bool:
    if cls in ("qMRMLNodeComboBox", "qMRMLCheckableNodeComboBox"):
        node_types = widget_property(widget, "nodeTypes") or []
        return bool(node_types) and all(t in annotation for t in node_types)
    if cls == "ctkPathLineEdit":
        return annotation == "Path"
    if cls == "QSpinBox":
        return annotation.startswith("Annotated[int")
    if cls == "QDoubleSpinBox":
        return annotation.startswith("Annotated[float")
    if cls == "QComboBox":
        items = [i.find("property/string").text for i in widget.findall("item")]
        match = re.search(r"Choice\((\[.*?\])\)", annotation)
        return annotation.startswith("Annotated[str") and match is not None and ast.literal_eval(match.group(1)) == items
    if cls == "QCheckBox":
        return "bool" in annotation
    return False


@pytest.mark.parametrize("module", sorted(MODULES))
def test_parameter_names_match_the_parameter_node(module):
    fields = parameter_fields(module)
    bound = {}
    for name, w in ui_widgets(module).items():
        for p in w.findall("property"):
            if p.get("name") == "SlicerParameterName":
                assert p.get("stdset") == "0", f"{name}: SlicerParameterName must be a dynamic property"
                bound[p[0].text] = w
    assert bound, f"{module}.ui binds no parameter"
    for parameter, w in bound.items():
        assert parameter in fields, f"{module}.ui binds {parameter!r}, not a field of the parameter node"
        assert _compatible(w.get("class"), fields[parameter], w), (
            f"{module}.ui: {w.get('name')} ({w.get('class')}) cannot show {parameter}: {fields[parameter]}"
        )


def test_identifier_scene_widgets_get_the_scene():
    root = ET.parse(ui_path("CACIdentifier")).getroot()
    receivers = {
        c.find("receiver").text
        for c in root.iter("connection")
        if c.find("signal").text == "mrmlSceneChanged(vtkMRMLScene*)"
    }
    mrml_widgets = {n for n, w in ui_widgets("CACIdentifier").items() if w.get("class").startswith("qMRML")
                    and w.get("class") != "qMRMLWidget"}
    assert mrml_widgets and mrml_widgets <= receivers


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_script_structure(module, tmp_path):
    py_compile.compile(str(script_path(module)), cfile=str(tmp_path / "x.pyc"), doraise=True)
    tree = parse_script(module)
    classes = {n.name: [ast.unparse(b) for b in n.bases] for n in tree.body if isinstance(n, ast.ClassDef)}
    assert classes[module] == ["ScriptedLoadableModule"]
    assert "ScriptedLoadableModuleWidget" in classes[f"{module}Widget"]
    assert classes[f"{module}Logic"] == ["ScriptedLoadableModuleLogic"]
    assert classes[f"{module}Test"] == ["ScriptedLoadableModuleTest"]
    source = script_path(module).read_text()
    assert f'self.resourcePath("UI/{module}.ui")' in source
    assert "slicer.util.childWidgetVariables" in source
    # Heavy or optional packages are never imported when Slicer loads the module.
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                assert not name.startswith(("torch", "CACIdentifierLib", "CACTrainerLib", "numpy")), (
                    f"{module}.py imports {name} at module level"
                )


def test_workflow_core_imports_neither_slicer_nor_qt():
    libs = [ROOT / "CACIdentifier" / "CACIdentifierLib", ROOT / "CACTrainer" / "CACTrainerLib", ROOT / "CACTrainer" / "cac",
            ROOT / "CACAnnotator" / "CACAnnotatorLib"]  # its MRML work goes through mrml.py
    for lib in libs:
        for path in sorted(lib.rglob("*.py")):
            if path.name in ("mrml.py", "slicercore.py"):
                continue
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = [node.module or ""]
                else:
                    continue
                for name in names:
                    assert name.split(".")[0] not in ("slicer", "qt", "ctk"), f"{path.name} imports {name}"


# --------------------------------------------------------------------------- CMake


def _cmake_list(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"set({variable} ...) not found"
    return match.group(1).split()


def test_top_level_cmake_is_a_slicer_extension():
    text = (ROOT / "CMakeLists.txt").read_text()
    for needle in (
        "cmake_minimum_required(",
        "project(SlicerCAC)",
        "EXTENSION_HOMEPAGE",
        "EXTENSION_CATEGORY",
        "EXTENSION_CONTRIBUTORS",
        "EXTENSION_DESCRIPTION",
        "EXTENSION_ICONURL",
        "EXTENSION_SCREENSHOTURLS",
        "set(EXTENSION_DEPENDS PyTorch)",
        "find_package(Slicer REQUIRED)",
        "include(${Slicer_USE_FILE})",
        "add_subdirectory(CACIdentifier)",
        "add_subdirectory(CACTrainer)",
        "add_subdirectory(CACAnnotator)",
        "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
        "include(${Slicer_EXTENSION_CPACK})",
    ):
        assert needle in text, f"CMakeLists.txt lacks {needle}"
    assert text.index("find_package(Slicer") < text.index("add_subdirectory(CACIdentifier)")
    # Extensions Index: contributors as "Name (Affiliation)", a screenshot and an icon that exist here.
    contributors = re.search(r'set\(EXTENSION_CONTRIBUTORS "(.*?)"\)', text).group(1)
    assert all(re.fullmatch(r"[^(),]+ \([^()]+\)", c.strip()) for c in contributors.split(","))
    for variable in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        for url in re.search(rf'set\({variable} "(.*?)"\)', text).group(1).split():
            path = url.split("/main/", 1)[1]
            assert (ROOT / path).is_file(), f"{variable} names {path}, which is not in the repository"
            assert path.endswith(".png")
    license_text = (ROOT / "LICENSE.txt").read_text()
    assert "Apache License" in license_text and "Version 2.0" in license_text
    pyproject = (ROOT / "pyproject.toml").read_text()  # SPDX expression and file (PEP 639)
    assert re.search(r'^license = "Apache-2.0"$', pyproject, re.M)
    assert re.search(r'^license-files = \["LICENSE.txt"\]$', pyproject, re.M)
    assert text.index("add_subdirectory(CACTrainer)") < text.index("Slicer_EXTENSION_CPACK")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_cmake_lists_every_lib_file_and_resource(module):
    folder = MODULES[module]
    text = (folder / "CMakeLists.txt").read_text()
    assert f"set(MODULE_NAME {module})" in text
    scripts = [s.replace("${MODULE_NAME}", module) for s in _cmake_list(text, "MODULE_PYTHON_SCRIPTS")]
    resources = [s.replace("${MODULE_NAME}", module) for s in _cmake_list(text, "MODULE_PYTHON_RESOURCES")]
    lib = f"{module}Lib"
    # Every Python file in the module's folder: the Lib, and for CACTrainer the cac application package.
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*.py")} - {f"{module}.py"}
    listed = {s for s in scripts if s != f"{module}.py"}
    assert not on_disk - listed, f"{module}/CMakeLists.txt does not list {sorted(on_disk - listed)}"
    assert not listed - on_disk, f"{module}/CMakeLists.txt lists missing files {sorted(listed - on_disk)}"
    assert f"{module}.py" in scripts
    data_files = {f"{lib}/{p.name}" for p in (folder / lib).glob("*.json")}
    assert data_files <= set(resources), f"{module}: Lib data files not in resources: {data_files - set(resources)}"
    assert f"Resources/Icons/{module}.png" in resources and f"Resources/UI/{module}.ui" in resources
    for item in scripts + resources:
        assert (folder / item).is_file(), f"{module}/CMakeLists.txt lists {item}, which does not exist"
    assert "slicerMacroBuildScriptedModule(" in text
    assert re.search(r"if\(BUILD_TESTING\).*slicer_add_python_unittest\(SCRIPT \$\{MODULE_NAME\}\.py\)", text, re.S)


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_icons_are_128_px_pngs():
    for path in (
        ROOT / "Resources" / "Icons" / "CAC.png",
        ROOT / "CACIdentifier" / "Resources" / "Icons" / "CACIdentifier.png",
        ROOT / "CACTrainer" / "Resources" / "Icons" / "CACTrainer.png",
        ROOT / "CACAnnotator" / "Resources" / "Icons" / "CACAnnotator.png",
    ):
        assert _png_size(path) == (128, 128)


# --------------------------------------------------------------------------- trainer helpers


def _trainer_functions() -> dict:
    """The pure helper functions of CACTrainer.py, executed without Slicer."""
    tree = parse_script("CACTrainer")
    wanted = {"_cacCommand", "buildPhantomCommand", "buildTrainCommand", "buildCalibrateCommand"}
    body = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in wanted]
    namespace = {"os": os}
    exec(compile(ast.Module(body=body, type_ignores=[]), "CACTrainer.py", "exec"), namespace)
    assert wanted <= set(namespace)
    return namespace


def test_trainer_curve_nodes_on_the_real_scene():
    """CACTrainerLogic's curves table and chart, run on slicer-core's scene (the panel's own methods)."""
    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
    from cac.train_events import CURVE_COLUMNS
    from CACIdentifierLib import slicercore

    tree = parse_script("CACTrainer")
    logic = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "CACTrainerLogic")
    wanted = {"createCurveNodes", "appendCurveRow"}
    body = [n for n in logic.body if isinstance(n, ast.FunctionDef) and n.name in wanted]
    namespace = {"slicer": slicer, "_": str}
    exec(compile(ast.Module(body=body, type_ignores=[]), "CACTrainer.py", "exec"), namespace)
    scene = slicercore.new_scene()
    table, chart = namespace["createCurveNodes"](scene)
    assert table.IsA("vtkMRMLTableNode") and chart.IsA("vtkMRMLPlotChartNode")
    assert scene.GetNodeByID(table.GetID()) is table and table.GetNumberOfRows() == 0
    assert [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())] == CURVE_COLUMNS
    assert chart.GetNumberOfPlotSeriesNodes() == len(CURVE_COLUMNS) - 3
    series = [chart.GetNthPlotSeriesNode(i) for i in range(chart.GetNumberOfPlotSeriesNodes())]
    assert {s.GetYColumnName() for s in series} == {"train_loss", "val_loss", "val_f1", "val_auc",
                                                    "val_auc_within_position", "val_iom"}
    assert all(s.GetTableNode() is table and s.GetXColumnName() == "step" for s in series)
    events = [{"event": "epoch", "stage": 1, "epoch": 1, "epochs": 2, "train_loss": 0.7, "val_f1": 0.5, "val_auc": 0.8,
               "val_auc_within_position": 0.75},
              {"event": "epoch", "stage": 1, "epoch": 2, "epochs": 2, "train_loss": 0.6, "val_f1": 0.6},
              {"event": "epoch", "stage": 2, "epoch": 1, "epochs": 1, "train_loss": 0.4, "val_iom": 0.55}]
    for event in events:
        namespace["appendCurveRow"](table, event)
    vtable = table.GetTable()
    assert table.GetNumberOfRows() == 3
    assert [vtable.GetValueByName(i, "step").ToDouble() for i in range(3)] == [1.0, 2.0, 3.0]
    assert vtable.GetValueByName(2, "stage").ToDouble() == 2.0
    assert vtable.GetValueByName(0, "val_auc").ToDouble() == pytest.approx(0.8)
    assert math.isnan(vtable.GetValueByName(1, "val_auc").ToDouble())
    assert vtable.GetValueByName(0, "val_auc_within_position").ToDouble() == pytest.approx(0.75)
    assert vtable.GetValueByName(2, "val_iom").ToDouble() == pytest.approx(0.55)
    assert math.isnan(vtable.GetValueByName(0, "val_iom").ToDouble())


def test_trainer_progress_lines():
    """The lines `cac train --json` writes are the lines the panel reads (one module, cac.train_events)."""
    from cac import train_events

    line = '{"event": "epoch", "stage": 1, "epoch": 3, "epochs": 4, "train_loss": 0.5, "val_f1": 0.8, "val_iom": null}'
    event = train_events.parse_line(line + "\n")
    assert event["epoch"] == 3
    assert train_events.parse_line(train_events.format_line(event)) == event
    assert train_events.progress_fraction(event) == pytest.approx(0.375)
    assert train_events.progress_fraction({"stage": 2, "epoch": 4, "epochs": 4}) == pytest.approx(1.0)
    assert train_events.progress_fraction({"stage": 1, "epoch": 1, "epochs": 0}) is None
    row = train_events.curve_row(event)
    assert row["train_loss"] == 0.5 and row["val_f1"] == 0.8 and math.isnan(row["val_iom"])
    assert math.isnan(row["val_auc"])  # not reported (an older trainer, or stage 2)
    assert train_events.curve_row({**event, "val_auc": 0.83})["val_auc"] == 0.83
    assert train_events.curve_row({"loss": 2})["train_loss"] == 2.0  # older trainers said "loss"
    for junk in ("", "Epoch 3", "[####....] 3/4", '{"unterminated": ', "[1, 2]", "{not json}"):
        assert train_events.parse_line(junk) is None
    source = (ROOT / "CACTrainer" / "CACTrainer.py").read_text()
    assert "json.loads" not in source, "the panel parses progress lines through cac.train_events only"


def test_trainer_commands_are_accepted_by_the_cac_parser():
    f = _trainer_functions()
    train = f["buildTrainCommand"]("py", "/data/set", "/out/run", "acquisition", 2, 3, 4, "cpu", 9, True)
    assert train[1:4] == ["-m", "cac", "train"]
    assert train[train.index("--fold") + 1] == "2" and "--overwrite" in train
    no_cv = f["buildTrainCommand"]("py", "/d", "/m.safetensors", "none", 2)
    assert "--fold" not in no_cv and "--init" not in no_cv
    tuned = f["buildTrainCommand"]("py", "/d", "/m.safetensors", "none", -1, 2, 1, "cpu", 0, False, "/shipped.safetensors")
    assert tuned[tuned.index("--init") + 1] == "/shipped.safetensors"
    with pytest.raises(ValueError):
        f["buildTrainCommand"]("py", "/d", "/m", "bogus")
    # Epochs 0 (the panel's default): the recipe's own; phantom patients instead of a dataset folder.
    paper = f["buildTrainCommand"]("py", "/d", "/m.safetensors", "none", -1, 0, 0, recipe="paper")
    assert "--epochs1" not in paper and "--epochs2" not in paper and "--phantom-pool" not in paper
    stream = f["buildTrainCommand"]("py", "/ignored", "/m.safetensors", "none", -1, 0, 3, phantomPool=60,
                                    refreshPatients=10)
    assert "/ignored" not in stream and stream[stream.index("--refresh-patients") + 1] == "10"
    for bad in ({"recipe": "fast"}, {"refreshPatients": 5}, {"phantomPool": 60, "refreshPatients": 5}):
        with pytest.raises(ValueError):
            f["buildTrainCommand"]("py", "/d", "/m.safetensors", "patient", **bad)
    phantom = f["buildPhantomCommand"]("py", "/data/set", 14, 3, 5)
    assert phantom[3:5] == ["phantom", "/data/set"] and "--randomize" not in phantom
    randomized = f["buildPhantomCommand"]("py", "/data/set", 14, 3, 5, True, randomize=True)
    assert randomized[-2:] == ["--randomize", "--overwrite"]
    calibrate = f["buildCalibrateCommand"]("py", "/m.safetensors", "/held-out", "/c.safetensors", "platt", 0.9, True)
    assert calibrate[3:5] == ["calibrate", "/m.safetensors"] and calibrate[calibrate.index("--sensitivity") + 1] == "0.9"
    kept = f["buildCalibrateCommand"]("py", "/m.safetensors", "/held-out", "/c.safetensors", "none", 0.0)
    assert "--sensitivity" not in kept and "--overwrite" not in kept and kept[kept.index("--method") + 1] == "none"
    with pytest.raises(ValueError):
        f["buildCalibrateCommand"]("py", "/m", "/d", "/c", "isotonic")

    from cac import cli
    parser = cli.build_parser()
    subcommands = set(parser._subparsers._group_actions[0].choices)
    resumed = f["buildTrainCommand"]("py", "/d", "/m.safetensors", "none", resume=True)
    assert "--resume" in resumed and "--resume" not in no_cv and "--overwrite" not in resumed
    for command in (train, no_cv, tuned, phantom, calibrate, kept, resumed):
        if command[3] not in subcommands:
            pytest.skip(f"`cac {command[3]}` is not available yet")
        args = parser.parse_args(command[3:])
        assert args.command == command[3]
    args = parser.parse_args(train[3:])
    assert (args.cv, args.fold, args.epochs1, args.epochs2, args.device, args.seed) == ("acquisition", 2, 3, 4, "cpu", 9)
    assert parser.parse_args(tuned[3:]).init == "/shipped.safetensors"
    assert parser.parse_args(resumed[3:]).resume and not parser.parse_args(no_cv[3:]).resume
    # The panel's two input options reach the parser; twins only on a stream, as `cac train` refuses otherwise.
    twins = f["buildTrainCommand"]("py", "", "/m.safetensors", "none", phantomPool=60, refreshPatients=10,
                                   residualChannel=True, counterfactualTwins=True)
    parsed = parser.parse_args(twins[3:])
    assert parsed.residual_channel is True and parsed.counterfactual_twins is True
    plain = parser.parse_args(stream[3:])
    assert plain.residual_channel is None and plain.counterfactual_twins is False  # unchecked: the recipe's
    with pytest.raises(ValueError, match="twins"):
        f["buildTrainCommand"]("py", "", "/m.safetensors", "none", phantomPool=60, counterfactualTwins=True)
    from cac import cli_train

    args = parser.parse_args(paper[3:])
    assert (args.recipe, args.epochs1, args.epochs2) == ("paper", None, None)
    config = cli_train._config(args)
    assert (config.recipe, config.epochs1, config.epochs2) == ("paper", 100, 100)  # the recipe's epochs
    args = parser.parse_args(stream[3:])
    assert (args.dataset, args.phantom_pool, args.refresh_patients, args.recipe) == (None, 60, 10, "default")
    assert (cli_train._config(args).epochs1, cli_train._config(args).epochs2) == (12, 3)
    args = parser.parse_args(phantom[3:])
    assert (args.patients, args.acquisitions_per_patient, args.seed, args.randomize) == (14, 3, 5, False)
    assert parser.parse_args(randomized[3:]).randomize


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_level_mrml_imports_are_core_classes(module):
    """Module-level `from slicer import vtkMRML...` must name MRMLCore classes: loadable-module
    classes are not in the `slicer` namespace yet when Slicer imports a scripted module."""
    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
    for node in parse_script(module).body:
        if isinstance(node, ast.ImportFrom) and node.module == "slicer":
            for alias in node.names:
                if alias.name.startswith("vtkMRML"):
                    cls = getattr(slicer, alias.name)
                    assert cls.__module__.endswith("MRMLCore"), f"{alias.name} is in {cls.__module__}"


def _identifier_package_check() -> dict:
    tree = parse_script("CACIdentifier")
    body = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_versionTuple"]
    body += [n for n in tree.body if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "REQUIRED_PACKAGES"]
    namespace: dict = {}
    exec(compile(ast.Module(body=body, type_ignores=[]), "CACIdentifier.py", "exec"), namespace)
    return namespace


def test_identifier_package_list_matches_pyproject_and_this_environment():
    from importlib import metadata

    ns = _identifier_package_check()
    version = ns["_versionTuple"]
    assert version("2.13.0+cpu") == (2, 13) and version("3.0.1") == (3, 0) and version("1") == (1, 0)
    assert version("0.26rc1") == (0, 26) and version("garbage") == (0, 0)
    required = {dist.lower() for _name, dist, _min, _req in ns["REQUIRED_PACKAGES"]}
    text = (ROOT / "pyproject.toml").read_text()
    deps = re.search(r"dependencies = \[(.*?)\]", text, re.S).group(1)
    names = {re.split(r"[<>=!\[ ]", d.strip().strip('",'))[0].lower() for d in deps.split("\n") if d.strip().strip(",")}
    names -= {"slicer-core", "pylibjpeg-libjpeg", "pylibjpeg-rle"}  # Slicer itself; pulled in with pylibjpeg
    names -= {"highdicom"}  # only `cac identify --dicom-seg` needs it; the panel exports no DICOM SEG yet
    assert names <= required, f"pyproject dependencies not checked by CAC Identifier: {names - required}"
    for _name, dist, minimum, _req in ns["REQUIRED_PACKAGES"]:
        assert version(metadata.version(dist)) >= version(minimum), f"{dist} here is older than {minimum}"


def test_identifier_result_summary():
    tree = parse_script("CACIdentifier")
    body = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in ("summaryText", "_resultItem")]
    namespace = {"_": lambda text: text}
    exec(compile(ast.Module(body=body, type_ignores=[]), "CACIdentifier.py", "exec"), namespace)
    summary_text, item = namespace["summaryText"], namespace["_resultItem"]
    report = {
        "frames": [{"index": 0, "roi_area_mm2": 12.5}, {"index": 1, "roi_area_mm2": 0.0},
                   {"index": 2, "roi_area_mm2": None}],
        "heart_rate_bpm": 71.6,
    }
    summary = {"iom": {"median": 0.64, "q1": 0.46, "q3": 0.86}, "hd_mm": {"median": 47.16, "q1": None, "q3": 63.77}}
    text = summary_text(report, summary)
    assert text == "3 non-contrast frames, CAC ROI in 1; heart rate 72 bpm; IoM 0.64 (0.46-0.86), HD 47.2 (n/a-63.8) mm."
    assert summary_text(None, None) == "Done."
    summary.update(roi_precision={"median": 0.8}, roi_area_pct_field={"median": 0.4213},
                   detection={"sensitivity": 0.9, "specificity": None})
    assert summary_text(report, summary).endswith(
        "HD 47.2 (n/a-63.8) mm; ROI precision 0.80, ROI area 0.42 % of the field; "
        "frames with calcium found 0.90, calcium-free frames clean n/a.")
    gated = {"frames": [{"index": 0, "roi_area_mm2": 0.0}],
             "parameters": {"cine_gate_withheld": True, "cine_evidence": 0.1234, "cine_threshold": 0.2}}
    assert summary_text(gated, None) == ("1 non-contrast frames, CAC ROI in 0; no ROI drawn: the cine's evidence "
                                         "0.123 is below the model's cine threshold 0.200.")
    static = {"frames": [{"index": 0, "roi_area_mm2": 3.0}], "parameters": {"static_rois_removed": 2}}
    assert summary_text(static, None) == "1 non-contrast frames, CAC ROI in 1; 2 ROIs on spots that never move removed."
    warned = {"frames": [{"index": 0, "roi_area_mm2": 3.0}], "warnings": ["no contrast arrival found"],
              "distribution_warnings": ["the cine's image features lie outside the model's training data"]}
    assert summary_text(warned, None) == ("1 non-contrast frames, CAC ROI in 1.\nWarning: the cine's image features "
                                          "lie outside the model's training data\nWarning: no contrast arrival found")
    result = {"roi_segmentation": "seg", "table": None, "report": report}
    assert item(result, "roi_segmentation", "segmentation_node") == "seg"
    assert item(result, "table", "table_node") is None
    assert item(type("R", (), {"table_node": "t"})(), "table", "table_node") == "t"
    # The keys read above are the ones the Lib writes.
    lib = ROOT / "CACIdentifier" / "CACIdentifierLib"
    report_source = (lib / "report.py").read_text()
    for key in ("frames", "heart_rate_bpm", "roi_area_mm2", "summary", "warnings", "distribution_warnings"):
        assert f'"{key}"' in report_source
    inference_source = (lib / "inference.py").read_text()
    for key in ("cine_gate_withheld", "cine_evidence", "cine_threshold", "static_rois_removed"):
        assert key + "=" in inference_source
    logic_source = (lib / "logic.py").read_text()
    for key in ("roi_segmentation", "table", "report", "summary"):
        assert f'"{key}"' in logic_source

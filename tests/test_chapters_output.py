"""What ``run_notebook`` writes: progress-bar widgets become text, real widgets keep their state.

The notebooks here are small hand-made dicts shaped like what nbclient stores: widget views in the
cells' outputs, every widget model's state in ``metadata.widgets``. The bars copy the structure
tqdm.notebook builds (an HBox of HTML, FloatProgress, HTML, each with a layout and a style).
"""

import copy

import nbformat
import pytest

from mtl_tutorial.chapters import WIDGET_STATE, WIDGET_VIEW, progress_bars_as_text


def _model(name: str, **state) -> dict:
    module = "@jupyter-widgets/base" if name == "LayoutModel" else "@jupyter-widgets/controls"
    return {"model_module": module, "model_module_version": "2.0.0", "model_name": name,
            "state": {"_model_name": name, **state}}


def _ref(model_id: str) -> str:
    return f"IPY_MODEL_{model_id}"


def _view(model_id: str, text: str) -> dict:
    return nbformat.v4.new_output("display_data", data={
        WIDGET_VIEW: {"model_id": model_id, "version_major": 2, "version_minor": 0}, "text/plain": text})


def _add_bar(state: dict, prefix: str, left: str, value: float, total: float, right: str) -> str:
    """A tqdm.notebook bar as nbclient stores it (texts as tqdm writes them: figure spaces, HTML
    escapes); returns the HBox's id."""
    for part in ("box", "left", "bar", "right"):
        state[f"{prefix}-{part}-layout"] = _model("LayoutModel")
    for part, style in (("left", "HTMLStyleModel"), ("bar", "ProgressStyleModel"), ("right", "HTMLStyleModel")):
        state[f"{prefix}-{part}-style"] = _model(style)
    state[f"{prefix}-left"] = _model("HTMLModel", value=left.replace(" ", "\u2007"),
                                     layout=_ref(f"{prefix}-left-layout"), style=_ref(f"{prefix}-left-style"))
    state[f"{prefix}-bar"] = _model("FloatProgressModel", min=0.0, max=total, value=value, bar_style="",
                                    layout=_ref(f"{prefix}-bar-layout"), style=_ref(f"{prefix}-bar-style"))
    state[f"{prefix}-right"] = _model("HTMLModel", value=right.replace(" ", "\u2007").replace("<", "&lt;"),
                                      layout=_ref(f"{prefix}-right-layout"), style=_ref(f"{prefix}-right-style"))
    state[f"{prefix}-box"] = _model("HBoxModel", layout=_ref(f"{prefix}-box-layout"),
                                    children=[_ref(f"{prefix}-{part}") for part in ("left", "bar", "right")])
    return f"{prefix}-box"


def _add_slider(state: dict) -> str:
    """A slider driving an Output widget that shows a figure, as ``interactive_output`` builds it;
    returns the VBox's id."""
    state["slider-layout"], state["output-layout"], state["vbox-layout"] = (_model("LayoutModel") for _ in range(3))
    state["slider-style"] = _model("SliderStyleModel")
    state["slider"] = _model("FloatSliderModel", value=0.5, min=0.0, max=1.0, description="λ",
                             layout=_ref("slider-layout"), style=_ref("slider-style"))
    figure = nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"})
    state["output"] = _model("OutputModel", layout=_ref("output-layout"), outputs=[figure])
    state["vbox"] = _model("VBoxModel", layout=_ref("vbox-layout"), children=[_ref("slider"), _ref("output")])
    return "vbox"


def _notebook(state: dict, cells: list[list[dict]]) -> dict:
    notebook = nbformat.v4.new_notebook()
    for count, outputs in enumerate(cells, start=1):
        notebook.cells.append(nbformat.v4.new_code_cell("train(...)", execution_count=count, outputs=outputs))
    notebook.metadata["widgets"] = {WIDGET_STATE: {"state": state, "version_major": 2, "version_minor": 0}}
    return notebook


def _state(notebook: dict) -> dict:
    return notebook["metadata"]["widgets"][WIDGET_STATE]["state"]


def test_a_finished_progress_bar_becomes_one_line_of_text_and_its_models_go():
    state = {}
    bar = _add_bar(state, "equal", "equal, seed 0: 100%", 150, 150, " 150/150 [00:01<00:00, 99.50it/s, loss=0.4321]")
    printed = nbformat.v4.new_output("stream", text="equal seed 0: test macro-F1 0.61\n")
    notebook = _notebook(state, [[_view(bar, "equal, seed 0:   0%|  | 0/150 [00:00<?, ?it/s]"), printed]])

    assert progress_bars_as_text(notebook) == 1
    line, kept = notebook["cells"][0]["outputs"]
    assert line["output_type"] == "display_data" and list(line["data"]) == ["text/plain"]
    assert line["data"]["text/plain"] == "equal, seed 0: 100%|██████████| 150/150 [00:01<00:00, 99.50it/s, loss=0.4321]"
    assert kept == printed
    assert "widgets" not in notebook["metadata"]  # nothing else was a widget
    nbformat.validate(notebook)


def test_a_bar_closed_without_its_last_redraw_shows_the_count_it_reached():
    """leave=False: tqdm closes the bar after setting its value, without redrawing the texts."""
    state = {}
    bar = _add_bar(state, "dwa", "DWA, seed 1:  87%", 300, 300, " 262/300 [00:00<00:00, 425.19it/s, loss=0.7831]")
    notebook = _notebook(state, [[_view(bar, "DWA, seed 1:   0%| | 0/300")]])
    progress_bars_as_text(notebook)
    assert notebook["cells"][0]["outputs"][0]["data"]["text/plain"] == \
        "DWA, seed 1: 100%|██████████| 300/300 [00:00<00:00, 425.19it/s, loss=0.7831]"


def test_an_interrupted_bar_shows_how_far_it_got():
    state = {}
    bar = _add_bar(state, "cut", "fine-tune:  40%", 32, 80, " 32/80 [00:10<00:15,  3.10it/s]")
    notebook = _notebook(state, [[_view(bar, "")]])
    progress_bars_as_text(notebook)
    assert notebook["cells"][0]["outputs"][0]["data"]["text/plain"] == \
        "fine-tune:  40%|████      | 32/80 [00:10<00:15,  3.10it/s]"


def test_a_slider_keeps_its_view_and_state_next_to_a_bar():
    state = {}
    bar = _add_bar(state, "run", "seeds: 100%", 5, 5, " 5/5 [00:51<00:00,  9.85s/it]")
    slider = _add_slider(state)
    slider_state = copy.deepcopy({k: v for k, v in state.items() if not k.startswith("run-")})
    slider_view = _view(slider, "VBox(children=(FloatSlider(value=0.5, description='λ', max=1.0), Output()))")
    notebook = _notebook(state, [[_view(bar, "seeds:   0%| | 0/5")], [copy.deepcopy(slider_view)]])

    assert progress_bars_as_text(notebook) == 1
    assert notebook["cells"][1]["outputs"] == [slider_view]
    assert _state(notebook) == slider_state  # every slider model, and not one model of the bar
    nbformat.validate(notebook)


def test_a_layout_shared_with_a_slider_stays():
    state = {}
    bar = _add_bar(state, "run", "seeds: 100%", 5, 5, " 5/5 [00:51<00:00,  9.85s/it]")
    slider = _add_slider(state)
    state["run-box"]["state"]["layout"] = _ref("slider-layout")
    del state["run-box-layout"]
    notebook = _notebook(state, [[_view(bar, "")], [_view(slider, "VBox(...)")]])
    progress_bars_as_text(notebook)
    assert "slider-layout" in _state(notebook)
    assert not [model for model in _state(notebook) if model.startswith("run-")]


def test_a_bar_inside_an_output_widget_becomes_text_there_too():
    state = {}
    bar = _add_bar(state, "inner", "lr 0.01: 100%", 20, 20, " 20/20 [00:02<00:00,  9.90it/s]")
    slider = _add_slider(state)
    state["output"]["state"]["outputs"].insert(0, _view(bar, ""))
    notebook = _notebook(state, [[_view(slider, "VBox(...)")]])
    assert progress_bars_as_text(notebook) == 1
    shown = _state(notebook)["output"]["state"]["outputs"]
    assert shown[0]["data"] == {"text/plain": "lr 0.01: 100%|██████████| 20/20 [00:02<00:00,  9.90it/s]"}
    assert "image/png" in shown[1]["data"]
    assert not [model for model in _state(notebook) if model.startswith("inner-")]


@pytest.mark.parametrize("children", [
    ["HTMLModel", "FloatSliderModel", "HTMLModel"],  # a labelled slider, not a bar
    ["HTMLModel", "FloatProgressModel"],  # a progress widget without tqdm's right-hand text
    ["LabelModel", "IntProgressModel", "HTMLModel"],
])
def test_other_boxes_are_not_progress_bars(children):
    state = {f"c{k}": _model(name, value=0) for k, name in enumerate(children)}
    state["box"] = _model("HBoxModel", children=[_ref(f"c{k}") for k in range(len(children))])
    notebook = _notebook(state, [[_view("box", "HBox(...)")]])
    unchanged = copy.deepcopy(notebook)
    assert progress_bars_as_text(notebook) == 0
    assert notebook == unchanged


def test_a_notebook_without_widgets_is_unchanged():
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_markdown_cell("# A chapter"),
                      nbformat.v4.new_code_cell("print(1)", execution_count=1,
                                                outputs=[nbformat.v4.new_output("stream", text="1\n")])]
    unchanged = copy.deepcopy(notebook)
    assert progress_bars_as_text(notebook) == 0
    assert notebook == unchanged

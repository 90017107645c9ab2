"""Lenient params parsing and result options."""

from __future__ import annotations

import json

import pytest

from aiaa_server.errors import InvalidImage, InvalidModel, InvalidParams
from aiaa_server.imaging.formats import ImageFormat
from aiaa_server.inference.interactive import CLICKS_KEY, DeepgrowClicks, ExtremePoints, parse_points, prepare_params
from aiaa_server.inference.params import RequestParams, ResultOptions, loads_bounded, parse_params
from aiaa_server.mmar.config import ModelType
from aiaa_server.mmar.loader import parse_config


@pytest.mark.parametrize("raw", [None, "", "  ", "null", b"null", "{}"])
def test_empty_forms_become_empty_dict(raw: object) -> None:
    assert parse_params(raw) == {}


def test_json_encoded_lists_are_decoded() -> None:
    params = parse_params('{"points": "[[1,2,3],[4,5,6]]", "label": "spleen", "bad": "[not json"}')
    assert params == {"points": [[1, 2, 3], [4, 5, 6]], "label": "spleen", "bad": "[not json"}


@pytest.mark.parametrize(("raw", "word"), [("{oops", "not valid JSON"), ("[1]", "JSON object"), ("3", "JSON object")])
def test_bad_params(raw: str, word: str) -> None:
    with pytest.raises(InvalidParams, match=word):
        parse_params(raw)


def test_result_options() -> None:
    options = ResultOptions.from_params(
        {"result_extension": "nrrd", "result_dtype": "uint16", "result_compress": "true"}
    )
    assert options.output_format(ImageFormat.NIFTI_GZ) is ImageFormat.NRRD
    assert options.compress(ImageFormat.NRRD) is True
    assert options.dtype.name == "uint16"
    default = ResultOptions.from_params({})
    assert default.output_format(ImageFormat.NIFTI) is ImageFormat.NIFTI
    assert default.output_format(ImageFormat.DICOM) is ImageFormat.NIFTI_GZ
    uncompressed = ResultOptions.from_params({"result_compress": False})
    assert uncompressed.output_format(ImageFormat.NIFTI_GZ) is ImageFormat.NIFTI
    with pytest.raises(InvalidImage, match="result_extension"):
        ResultOptions.from_params({"result_extension": ".jpg"})
    with pytest.raises(InvalidParams, match="result_compress"):
        ResultOptions.from_params({"result_compress": "perhaps"})


def test_points_accept_every_client_shape() -> None:
    assert parse_points([1, 2, 3], "current_point") == [[1, 2, 3]]
    assert parse_points([[1, 2, 3]], "current_point") == [[1, 2, 3]]
    assert parse_points(None, "current_point") == []
    assert parse_points([[1.4, 2.6, 3.0]], "foreground") == [[1, 3, 3]]
    with pytest.raises(InvalidParams, match="foreground"):
        parse_points("abc", "foreground")
    with pytest.raises(InvalidParams, match="numbers"):
        parse_points([["a", 2, 3]], "background")


def test_prepare_params_for_interactive_types() -> None:
    annotation = parse_config({"type": "annotation"})
    with pytest.raises(InvalidParams, match="at least 6"):
        prepare_params(annotation, {"points": [[1, 2, 3]] * 5})
    assert len(prepare_params(annotation, {"points": [[1, 2, 3]] * 6})["points"]) == 6
    deepgrow = parse_config({"type": "deepgrow", "inference": {"meta_data": {"deepgrow": "3D"}}})
    prepared = prepare_params(deepgrow, {"foreground": [[1, 2, 3]], "current_point": [1, 2, 3]})
    assert prepared["background"] == [] and prepared["current_point"] == [[1, 2, 3]]


def test_request_params_are_parsed_once_into_one_object() -> None:
    sent = parse_params('{"foreground": "[[1, 2, 3]]", "current_point": [4, 5, 6], "result_dtype": "uint16", '
                        '"label": "spleen"}')
    params = RequestParams.parse(sent, ModelType.DEEPGROW)
    assert params.result.dtype.name == "uint16"
    assert params.clicks == DeepgrowClicks([[1, 2, 3]], [], [[4, 5, 6]])
    data = params.pipeline_data()
    assert data["current_point"] == [[4, 5, 6]] and data["background"] == [] and data["label"] == "spleen"
    assert data[CLICKS_KEY] is params.clicks
    assert sent["current_point"] == [4, 5, 6] and "background" not in sent  # what the client sent is kept as is
    assert data is not params.pipeline_data()  # a fresh dict per call: the pipeline may change it


def test_request_params_parse_only_the_clicks_the_model_takes() -> None:
    sent = {"foreground": "not points", "points": [[1, 2, 3]] * 6}
    segmentation = RequestParams.parse(sent, ModelType.SEGMENTATION)
    assert segmentation.clicks is None and segmentation.pipeline_data() == sent  # passed through unparsed
    assert RequestParams.parse(sent, ModelType.ANNOTATION).clicks == ExtremePoints([[1, 2, 3]] * 6)
    with pytest.raises(InvalidParams, match="foreground must be a list"):
        RequestParams.parse(sent, ModelType.DEEPGROW)
    with pytest.raises(InvalidParams, match="result_compress"):
        RequestParams.parse({"result_compress": "perhaps", "foreground": [[1, 2, 3]]}, ModelType.DEEPGROW)


# ------------------------------------------------------------------ bounded JSON


@pytest.mark.parametrize(("text", "word"), [
    ('{"a": NaN}', "NaN"),
    ('{"a": [Infinity]}', "Infinity"),
    ('{"a": -Infinity}', "Infinity"),
    ('{"a": 1e400}', "out of range"),
    ('{"a": -1e400}', "out of range"),
    ('{"a": ' + "9" * 101 + "}", "101 characters"),
    ('{"a": 1.' + "0" * 200 + "}", "characters"),
    ('{"a": ' + "9" * 5000 + "}", "5000 characters"),
    ('{"a": ' + "[" * 64 + "]" * 64 + "}", "nested more than 64"),
    ("[" * 100_000 + "]" * 100_000, "nested more than 64"),
    ("[" * 100_000, "nested more than 64"),
])
def test_loads_bounded_refuses_what_json_loads_would_take(text: str, word: str) -> None:
    with pytest.raises(InvalidParams, match=word):
        loads_bounded(text)


def test_loads_bounded_accepts_up_to_the_limits() -> None:
    deep = loads_bounded('{"a": ' + "[" * 63 + "1" + "]" * 63 + "}")["a"]
    for _ in range(62):
        deep = deep[0]
    assert deep == [1]
    assert loads_bounded("[" + "9" * 100 + ", 1e300, -2.5e-300]") == [int("9" * 100), 1e300, -2.5e-300]
    assert loads_bounded(b'{"a": [1, 2]}') == {"a": [1, 2]}


def test_string_contents_do_not_count() -> None:
    text = json.dumps({"label": "x" + "[" * 500, "id": "9" * 500, "quoted": 'a\\"[[[ "{{{', "e": "1e999"})
    assert loads_bounded(text)["id"] == "9" * 500


def test_loads_bounded_names_what_and_raises_the_callers_error() -> None:
    with pytest.raises(InvalidModel, match=r"config_aiaa\.json: NaN"):
        loads_bounded('{"eps": NaN}', what="config_aiaa.json", error=InvalidModel)
    with pytest.raises(InvalidModel, match=r"config_aiaa\.json is not valid JSON"):
        loads_bounded("{oops", what="config_aiaa.json", error=InvalidModel)


def test_embedded_json_strings_have_the_same_bounds() -> None:
    with pytest.raises(InvalidParams, match=r"params\.points: JSON nested"):
        parse_params(json.dumps({"points": "[" * 1000 + "]" * 1000}))
    with pytest.raises(InvalidParams, match=r"params\.points: NaN"):
        parse_params(json.dumps({"points": "[[NaN, 1, 2]]"}))
    assert parse_params(json.dumps({"label": "[not json"})) == {"label": "[not json"}

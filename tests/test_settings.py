"""Settings objects: JSON round-trip, nested replace, one-line refusal of unknown keys, and the
``--settings`` files the CLI reads (a run.json, a train_settings.json)."""

import json

import pytest

from kt_stardist.errors import InputError
from kt_stardist.settings import (DetectSettings, FinetuneSettings, PipelineSettings, from_json, read_file, replace,
                                  to_dict, to_json)


def test_round_trip_and_nested_replace():
    s = replace(PipelineSettings(), pairs=True, detect=replace(DetectSettings(), prob_thresh=0.6,
                                                                  refine__method="none", split__enabled=False))
    assert from_json(PipelineSettings, to_json(s)) == s
    assert s.detect.refine.method == "none" and not s.detect.split.enabled and s.detect.prob_thresh == 0.6
    assert isinstance(to_dict(s)["detect"]["block_size_px"], list)


def test_tracks_default_follows_the_frames_and_a_choice_round_trips():
    auto = PipelineSettings()
    assert auto.tracks is None and auto.tracks_for(18) and not auto.tracks_for(1)
    for choice in (True, False):
        s = replace(auto, tracks=choice)
        assert from_json(PipelineSettings, to_json(s)) == s
        assert s.tracks_for(18) is choice and s.tracks_for(1) is choice
    assert from_json(PipelineSettings, to_json(auto)).tracks is None  # "tracks": null, not false


def test_bad_values_and_unknown_keys_are_one_line_errors():
    with pytest.raises(InputError, match="unknown setting"):
        from_json(DetectSettings, json.dumps({"prob_tresh": 0.5}))
    with pytest.raises(InputError, match="prob-thresh"):
        DetectSettings(prob_thresh=1.5)
    with pytest.raises(InputError, match="refine method"):
        replace(DetectSettings(), refine__method="bicubic")


def test_read_file_follows_run_json_and_drops_job(tmp_path):
    det = replace(DetectSettings(), nms_thresh=0.4)
    run = tmp_path / "points.run.json"
    run.write_text(json.dumps({"settings": to_dict(PipelineSettings(detect=det)), "model": {}}))
    assert read_file(DetectSettings, run, within=("settings", "detect")) == det
    ft = replace(FinetuneSettings(), train__epochs=3)
    tr = tmp_path / "train_settings.json"
    tr.write_text(json.dumps({"job": "FinetuneSettings", **to_dict(ft)}))
    assert read_file(FinetuneSettings, tr, drop=("job",)) == ft
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot read as JSON"):
        read_file(DetectSettings, tmp_path / "bad.json")

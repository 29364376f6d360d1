"""The port's parameter story in results.json (``params.story``) and atop the report's parameter section, in the
report's language (synthetic traces and results, pure numpy)."""
from __future__ import annotations

import html
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _synth import make_trace, port_of  # noqa: E402
from fixtures.make_results import make_results  # noqa: E402

from aligner.api import analyze  # noqa: E402
from aligner.analysis_records import StateTraces  # noqa: E402
from aligner.inventory import params_block  # noqa: E402
from aligner.records import ParamInfo, ParamKind  # noqa: E402
from aligner.report import write_outputs  # noqa: E402
from aligner.results_io import ResultsFormatError, load_results  # noqa: E402


def _port_with_extra_scale():  # noqa: ANN202
    """The synthetic reference (6 trainable tensors, 2 buffers) and a port with one extra trainable tensor."""
    t = make_trace()
    j = port_of(t)
    extra = ParamInfo("head.pred.scale", (2,), "float32", ParamKind.TRAINABLE, 2, "head.pred")
    return t, replace(j, params=[*j.params, extra])


def test_story_counts_the_extra_tensor_under_its_module() -> None:
    t, j = _port_with_extra_scale()
    story = params_block(t, j, {})["story"]
    assert story["torch"]["trainable_tensors"] == 6 and story["jittor"]["trainable_tensors"] == 7
    assert story["torch"]["buffer_tensors"] == story["jittor"]["buffer_tensors"] == 2
    assert (story["extra_tensors"], story["missing_tensors"], story["reshaped_tensors"]) == (1, 0, 0)
    assert story["extra"][0]["module"] == "head.pred" and story["extra"][0]["names"] == ["head.pred.scale"]
    assert story["en"].startswith("your port has 7 trainable tensors, the reference 6: +1 under head.pred")
    assert story["zh"].startswith("你的移植有 7 个可训练张量，参考实现 6 个：head.pred 下多 1 个")
    # analysis fills it in results.json
    d = analyze([StateTraces("perturbed", t, j, None)]).to_dict()
    assert d["params"]["story"]["en"] == story["en"]


def test_story_pairs_renamed_tensors_through_the_map() -> None:
    t = make_trace()
    j = port_of(t)
    j = replace(j, params=[replace(p, name=p.name.replace("neck.conv.", "neck.inner.conv."),
                                   module=p.module.replace("neck.conv", "neck.inner.conv")) for p in j.params])
    unmapped = params_block(t, j, {})["story"]
    assert (unmapped["extra_tensors"], unmapped["missing_tensors"]) == (1, 1)
    mapped = params_block(t, j, {}, {"neck.conv": "neck.inner.conv"})["story"]
    assert (mapped["extra_tensors"], mapped["missing_tensors"]) == (0, 0)
    assert "every tensor has a partner" in mapped["en"] and "每个张量都有对应" in mapped["zh"]


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_report_shows_the_story_in_its_language(tmp_path: Path, lang: str) -> None:
    t, j = _port_with_extra_scale()
    story = params_block(t, j, {})["story"]
    results = make_results("pass")
    results["params"]["story"] = story
    paths = write_outputs(results, tmp_path, lang=lang)
    page = paths.index_html.read_text(encoding="utf-8")
    own, other = (story["en"], story["zh"]) if lang == "en" else (story["zh"], story["en"])
    shown = f'<p class="param-story">{html.escape(own)}</p>'
    assert shown in page and html.escape(other) not in page
    section = page.index('<section id="params"')
    assert section < page.index(shown) < page.index("<table", section)  # atop the section, before its tables
    assert load_results(paths.results_json)["params"]["story"] == json.loads(json.dumps(story))


def test_results_without_a_story_still_load_and_render(tmp_path: Path) -> None:
    results = make_results("pass")
    results["params"].pop("story", None)
    page = write_outputs(results, tmp_path).index_html.read_text(encoding="utf-8")
    assert 'class="param-story"' not in page


def test_a_malformed_story_is_refused(tmp_path: Path) -> None:
    results = make_results("pass")
    results["params"]["story"] = {"en": 3, "zh": ""}
    with pytest.raises(ResultsFormatError, match=r"params\.story\.en: expected a string"):
        write_outputs(results, tmp_path)
    results["params"]["story"] = {"en": "", "zh": "", "extra_tensors": -1}
    with pytest.raises(ResultsFormatError, match=r"params\.story\.extra_tensors"):
        write_outputs(results, tmp_path)

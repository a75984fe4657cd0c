import json

import pytest

import lab
from lab.cases import Case, load_prompts

SEED_002 = [
    ("a photo of an astronaut riding a horse on mars", 50, 7.5),
    ("a beautiful landscape with mountains and a lake", 30, 5.0),
    ("a realistic portrait of a woman with blue eyes", 40, 7.0),
    ("a fantasy castle in the middle of a forest", 50, 8.0),
    ("a modern cityscape at night with neon lights", 30, 6.0),
]


def test_seed002_prompt_set_is_the_seed_list():
    cases = load_prompts("seed002")
    assert [(c.prompt, c.steps, c.guidance) for c in cases] == SEED_002
    assert len({c.name for c in cases}) == 5


def test_pipeline_kwargs_and_overrides():
    case = Case("a cat", steps=4, guidance=3.0, negative_prompt="blurry").with_overrides(height=64, width=64, seed=None)
    assert case.pipeline_kwargs() == {
        "prompt": "a cat", "num_inference_steps": 4, "guidance_scale": 3.0,
        "negative_prompt": "blurry", "height": 64, "width": 64,
    }
    assert case.seed == 0 and case.name == "a-cat"


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "not valid JSON"),
        ("{not json", "not valid JSON"),
        (json.dumps({"cases": []}), "non-empty list 'cases'"),
        (json.dumps([{"prompt": "x"}]), "non-empty list 'cases'"),
        (json.dumps({"cases": [{"prompt": ""}]}), "case 0: .*prompt must be a non-empty string"),
        (json.dumps({"cases": [{"prompt": "a"}, {"prompt": "b", "steps": 0}]}), "case 1: .*steps must be"),
        (json.dumps({"cases": [{"prompt": "a", "guidance": "high"}]}), "guidance must be"),
        (json.dumps({"cases": [{"prompt": "a", "height": 70}]}), "height must be a multiple of 8"),
        (json.dumps({"cases": [{"prompt": "a", "stepz": 3}]}), "unknown keys \\['stepz'\\]"),
        (json.dumps({"cases": ["just a string"]}), "case 0: expected an object"),
    ],
)
def test_malformed_prompt_files_name_the_problem(tmp_path, content, message):
    path = tmp_path / "prompts.json"
    path.write_text(content)
    with pytest.raises(lab.LabError, match=message) as err:
        load_prompts(path)
    assert str(path) in str(err.value)


def test_missing_file_and_unknown_set(tmp_path):
    with pytest.raises(lab.LabError, match="does not exist"):
        load_prompts(tmp_path / "missing.json")
    with pytest.raises(lab.LabError, match="shipped sets: seed002"):
        load_prompts("seed003")

import pytest
import yaml

from fashion_lora.params import ParamError, load_params, parse_params
from tests.helpers import REPO, raw_params


def test_default_params_load(params):
    assert params.data.source == "synthetic"
    assert params.model.base == "tiny"
    assert params.filter.min_resolution == 256
    assert params.train.lora.rank == 12 and params.train.lora.alpha == 24
    assert params.train.lora.target_modules == ["to_k", "to_q", "to_v", "to_out.0", "proj_in", "proj_out",
                                                "conv1", "conv2"]
    assert params.data.deepfashion.images_id == "1U2PljA7NE57jcSSzPs21ZurdIPXdYZtN"
    assert params.generate.steps == [20, 30, 50] and params.generate.guidance_scale == 3.0
    assert params.model.pretrain.neutral_word == "some" and params.model.pretrain.holdout < params.model.pretrain.images


@pytest.mark.parametrize("key,value,fragment", [
    ("model.pretrain.holdout", 5000, "model.pretrain.holdout"),
    ("model.pretrain.neutral_word", "two words", "model.pretrain.neutral_word"),
    ("model.pretrain.vae_learning_rate", 0.0, "model.pretrain.vae_learning_rate"),
    ("model.pretrain.withheld", ["upper_colour"], "model.pretrain.withheld"),
    ("model.pretrain.withheld", ["hat", "hat"], "model.pretrain.withheld"),
    ("judge.min_balanced_accuracy", 1.5, "judge.min_balanced_accuracy"),
    ("judge.height", 8, "judge.height"),
    ("filter.val_fraction", 1.5, "filter.val_fraction"),
    ("filter.val_fraction", 0, "filter.val_fraction"),
    ("data.synthetic.count", -3, "data.synthetic.count"),
    ("data.source", "ftp", "data.source"),
    ("train.timestep_bias", 0.0, "train.timestep_bias"),
    ("evaluate.attribute_seeds", 0, "evaluate.attribute_seeds"),
    ("train.lora.rank", "twelve", "train.lora.rank"),
    ("train.lora.rank", 0, "train.lora.rank"),
    ("train.device", "tpu", "train.device"),
    ("train.betas", [0.9], "train.betas"),
    ("precompute.resolution", 100, "precompute.resolution"),
    ("generate.steps", [], "generate.steps"),
    ("train.lora.target_modules", "to_q", "train.lora.target_modules"),
    ("filter.export_zip", "yes", "filter.export_zip"),
    ("seed", 1.5, "seed"),
    ("precompute.workers", 0, "precompute.workers"),
    ("precompute.workers", "many", "precompute.workers"),
    ("train.compile", True, "train.compile"),
    ("train.sync_every", 0, "train.sync_every"),
    ("generate.precision", "fp64", "generate.precision"),
    ("train.cuda_graphs", True, "train.cuda_graphs"),  # without train.compile
    ("precompute.shape", "bucket", "precompute.shape"),
    ("precompute.bucket_size", "long_side", "precompute.bucket_size"),
    ("generate.height", "tall", "generate.height"),
    ("generate.width", 100, "generate.width"),
    ("generate.height", None, "generate.height"),
])
def test_bad_values_name_the_key(key, value, fragment):
    with pytest.raises(ParamError) as e:
        parse_params(raw_params(**{key: value}))
    assert fragment in str(e.value)


def test_unknown_key_is_an_error():
    raw = raw_params()
    raw["train"]["lora"]["rnak"] = 4
    with pytest.raises(ParamError, match=r"train\.lora\.rnak.*not a known parameter"):
        parse_params(raw)


def test_missing_key_is_an_error():
    raw = raw_params()
    del raw["filter"]["sample_size"]
    with pytest.raises(ParamError, match=r"filter\.sample_size' is missing"):
        parse_params(raw)


def test_local_source_needs_paths():
    with pytest.raises(ParamError, match="data.local.images"):
        parse_params(raw_params(**{"data.source": "local"}))


def test_bad_yaml_file(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("seed: [1,\n")
    with pytest.raises(ParamError, match="not valid YAML"):
        load_params(f)


def test_ints_widen_to_float():
    p = parse_params(raw_params(**{"train.lora.alpha": 8}))
    assert isinstance(p.train.lora.alpha, float)


def test_stage_exits_with_one_line_error(tmp_path):
    """A bad param stops a stage with exit code 2 and a message naming the key, no traceback."""
    import shutil
    import subprocess
    import sys

    shutil.copytree(REPO / "stages", tmp_path / "stages")
    shutil.copytree(REPO / "fashion_lora", tmp_path / "fashion_lora")
    raw = raw_params(**{"filter.val_fraction": 2.0})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, "-m", "stages.filter"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "filter.val_fraction" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_yaml11_exponent_floats_parse():
    """PyYAML (YAML 1.1) reads `1e-4` as a string; as a float param it is the number 0.0001."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text().replace("learning_rate: 0.005", "learning_rate: 1e-4"))
    assert raw["train"]["learning_rate"] == "1e-4"  # what the YAML parser hands over
    assert parse_params(raw).train.learning_rate == 1e-4
    with pytest.raises(ParamError, match="train.learning_rate' must be a number, got '1e-4x'"):
        parse_params(raw_params(**{"train.learning_rate": "1e-4x"}))


def test_derived_params_follow_their_source():
    p = parse_params(raw_params(**{"train.max_steps": 400}))
    assert p.train.restart_period is None and p.train.cosine_period == 400  # empty = one cycle over the run
    assert parse_params(raw_params(**{"train.restart_period": 100})).train.cosine_period == 100
    p = parse_params(raw_params(**{"generate.height": 96}))
    assert (p.generate.height, p.generate.width) == (96, "auto")


def test_one_set_param_changes_one_line(tmp_path):
    """`dvc exp run -S key=value` rewrites params.yaml with DVC's YAML writer: the file is kept in
    that layout, so the diff is the one line."""
    from dvc.utils.hydra import apply_overrides

    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text())
    apply_overrides(path, ["train.lora.rank=4"])
    before, after = (REPO / "params.yaml").read_text().splitlines(), path.read_text().splitlines()
    assert len(before) == len(after)
    changed = [(a, b) for a, b in zip(before, after) if a != b]
    assert changed == [("    rank: 12", "    rank: 4")]


def test_stages_use_cpu_threads_from_params(tmp_path):
    """CPU results depend on the thread count: every stage sets torch's from `cpu_threads`."""
    import subprocess
    import sys

    for threads, expect in ((1, "1"), (None, None)):
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw_params(cpu_threads=threads)))
        code = ("import torch; from fashion_lora.params import load_params; from fashion_lora.devices import "
                "configure_torch; n = torch.get_num_threads(); configure_torch(load_params(), 'train'); "
                "print(torch.get_num_threads(), n)")
        out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                             env={**__import__("os").environ, "PYTHONPATH": str(REPO)}).stdout.split()
        assert out[0] == (expect or out[1])  # empty: torch's own default is kept


def test_worker_counts_accept_auto_or_a_number():
    """`precompute.workers` is `auto` (the cores) or a positive count; the message names both forms."""
    from fashion_lora.devices import worker_count

    assert parse_params(raw_params(**{"precompute.workers": "auto"})).precompute.workers == "auto"
    assert worker_count("auto") >= 1 and worker_count(3) == 3
    with pytest.raises(ParamError, match=r"precompute\.workers' must be an integer or 'auto', got 2\.5"):
        parse_params(raw_params(**{"precompute.workers": 2.5}))


def test_inference_precision_by_device():
    import torch

    from fashion_lora.errors import UserError
    from fashion_lora.precision import inference_dtype

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert inference_dtype("auto", cpu, "k") == torch.float32 and inference_dtype("auto", cuda, "k") == torch.float16
    assert inference_dtype("bf16", cpu, "k") == torch.bfloat16
    with pytest.raises(UserError, match="generate.precision: fp16 needs a CUDA GPU"):
        inference_dtype("fp16", cpu, "generate.precision")


def test_readme_real_run_command_sets_valid_params(tmp_path):
    """The README's DeepFashion + SD1.5 `dvc exp run -S ...` command, applied with DVC's own
    writer, gives params that load (a renamed or retyped key would break it here first)."""
    import re
    import shlex

    from dvc.utils.hydra import apply_overrides

    readme = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(dvc exp run -S data\.source=deepfashion.*?)```", readme, re.S).group(1)
    words = shlex.split(block.replace("\\\n", " "))
    overrides = [words[i + 1] for i, w in enumerate(words) if w == "-S"]
    assert len(overrides) >= 15
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text())
    apply_overrides(path, overrides)
    p = load_params(path)
    assert (p.data.source, p.precompute.resolution, p.precompute.workers) == ("deepfashion", 512, "auto")
    assert p.generate.negative_prompt.startswith("blurry") and p.train.batch_size == 4

"""Property-based: random wrong params always end in a ParamError naming the key, never a
traceback from deep inside the code."""

import copy

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fashion_lora.params import ParamError, parse_params
from tests.helpers import raw_params

BASE = raw_params()


def _paths(node, prefix=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, f"{prefix}.{k}" if prefix else k)
    else:
        yield prefix


PATHS = sorted(_paths(BASE))
# Checks that involve two keys name the second one.
PARTNERS = {"train.learning_rate": "train.min_lr", "precompute.max_aspect": "precompute.min_aspect",
            "train.captions.quality_terms": "train.captions.quality_terms"}
SECTIONS = sorted(BASE)
junk = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                 st.text(max_size=8), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3),
                                                                                           st.integers(), max_size=2))


def _get_parent(raw, dotted):
    *path, last = dotted.split(".")
    node = raw
    for k in path:
        node = node[k]
    return node, last


def _check(raw):
    try:
        parse_params(raw)
    except ParamError as e:
        assert "\n" not in str(e) and str(e).startswith("params: '")
        return e.key
    return None


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(PATHS), value=junk)
def test_random_wrong_value(path, value):
    raw = copy.deepcopy(BASE)
    node, last = _get_parent(raw, path)
    node[last] = value
    key = _check(raw)
    if key is not None:  # some junk is valid (e.g. another int); when it is not, the key is named
        assert key.split("[")[0] == path or key == PARTNERS.get(path), (path, value, key)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(path=st.sampled_from(PATHS), name=st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10))
def test_unknown_key(path, name):
    raw = copy.deepcopy(BASE)
    node, _ = _get_parent(raw, path)
    if name in node:
        return
    node[name] = 1
    key = _check(raw)
    assert key is not None and key.endswith("." + name) or key == name


@settings(max_examples=200, deadline=None, derandomize=True)
@given(section=st.sampled_from(SECTIONS), value=junk)
def test_missing_or_mangled_section(section, value):
    raw = copy.deepcopy(BASE)
    if value is None:
        del raw[section]
    else:
        raw[section] = value
    key = _check(raw)
    if value is None:  # a missing section is always an error
        assert key == section
    elif key is not None:  # junk may happen to be valid (seed: 0); when not, the section is named
        assert key.split(".")[0].split("[")[0] == section

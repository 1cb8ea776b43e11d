import pytest
import torch

from fusecc import OptionError, Options


def test_defaults():
    opts = Options.resolve({}, environ={})
    assert opts.target == "c" and opts.freeze and not opts.debug and opts.dump_dir is None
    assert opts.pass_enabled("fold_bn")


def test_env_then_dict_precedence():
    env = {"FUSECC_DEBUG": "1", "FUSECC_DUMP_DIR": "/tmp/x", "FUSECC_PASSES": "fold_bn=0, cse=1"}
    opts = Options.resolve({"dump_dir": "/tmp/y"}, environ=env)
    assert opts.debug is True
    assert opts.dump_dir == "/tmp/y"  # the dict wins over the environment
    assert opts.passes == {"fold_bn": False, "cse": True}
    assert not opts.pass_enabled("fold_bn")


def test_unknown_option_is_named_with_suggestion():
    with pytest.raises(OptionError, match=r"unknown fusecc option 'dumpdir' \(did you mean 'dump_dir'\?\)"):
        Options.resolve({"dumpdir": "/tmp"}, environ={})


@pytest.mark.parametrize(
    "options, message",
    [
        ({"debug": "yes"}, r"option 'debug' expects bool, got str 'yes'"),
        ({"debug": 1}, r"option 'debug' expects bool, got int 1"),
        ({"fallback": "ignore"}, r"option 'fallback' must be one of warn, silent, error"),
        ({"passes": {"fold_batchnorm": False}}, r"unknown fusecc pass 'fold_batchnorm' \(did you mean 'fold_bn'\?\)"),
        ({"passes": {"fold_bn": "off"}}, r"value for 'fold_bn' must be True or False"),
        ({"passes": ["fold_bn"]}, r"option 'passes' expects dict"),
        ({"target": "cuda-tensorcore"}, r"unknown fusecc target 'cuda-tensorcore'"),
    ],
)
def test_ill_typed_options_are_named(options, message):
    with pytest.raises(OptionError, match=message):
        Options.resolve(options, environ={})


def test_bad_environment_value_is_named():
    with pytest.raises(OptionError, match=r"FUSECC_DEBUG='maybe' is not a boolean"):
        Options.resolve({}, environ={"FUSECC_DEBUG": "maybe"})
    with pytest.raises(OptionError, match=r"FUSECC_PASSES: expected NAME=0\|1"):
        Options.resolve({}, environ={"FUSECC_PASSES": "fold_bn"})


def test_options_must_be_a_dict():
    with pytest.raises(OptionError, match="must be a dict"):
        Options.resolve(["debug"], environ={})


def test_torch_compile_reports_bad_option_by_name():
    compiled = torch.compile(torch.nn.Linear(2, 2), backend="fusecc", options={"dbug": True})
    with pytest.raises(Exception, match=r"unknown fusecc option 'dbug' \(did you mean 'debug'\?\)"):
        compiled(torch.randn(1, 2))


def test_env_var_reaches_torch_compile(monkeypatch, tmp_path):
    monkeypatch.setenv("FUSECC_DUMP_DIR", str(tmp_path))
    with torch.no_grad():
        torch.compile(torch.nn.Linear(2, 2), backend="fusecc")(torch.randn(1, 2))
    assert list(tmp_path.glob("*/summary.json")), "FUSECC_DUMP_DIR was not honoured"

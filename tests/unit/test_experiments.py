"""safespace_tasks.experiments: helpers the example scripts share."""

from __future__ import annotations

import pytest

from types import SimpleNamespace

from safespace_tasks.experiments import TrainEvalOverlapError, chat_prompt, normalise, require_data_dir, stop_token_ids


def test_the_data_folder_is_the_argument_else_the_environment(tmp_path, monkeypatch):
    (tmp_path / "env").mkdir()
    (tmp_path / "arg").mkdir()
    monkeypatch.setenv("SAFESPACE_DATA_DIR", str(tmp_path / "env"))
    assert require_data_dir(None) == (tmp_path / "env").resolve()
    assert require_data_dir(str(tmp_path / "arg")) == (tmp_path / "arg").resolve()


def test_a_script_without_a_data_folder_stops_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("SAFESPACE_DATA_DIR", raising=False)
    with pytest.raises(SystemExit, match="pass --data-dir or set SAFESPACE_DATA_DIR"):
        require_data_dir(None)
    with pytest.raises(SystemExit, match="does not exist"):
        require_data_dir(str(tmp_path / "missing"))


def test_normalise_hides_case_punctuation_and_spacing():
    assert normalise("  Hello,   WORLD!_x ") == "hello world x"
    assert normalise("ＡＢＣ-d") == normalise("abc d")  # NFKC folds full-width letters
    assert issubclass(TrainEvalOverlapError, AssertionError)


class _Tok:
    """A tokenizer's chat-template surface, without a vocabulary."""

    def __init__(self, template, eos_token_id=2):
        self.chat_template, self.eos_token_id = template, eos_token_id

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert tokenize is False and add_generation_prompt is True
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


def test_chat_prompt_uses_the_template_else_the_request_and_a_newline():
    from safespace_tasks.units_cli import _chat

    assert chat_prompt(_Tok("{{ x }}"), "Hi.") == "<user>Hi.<assistant>"
    assert chat_prompt(_Tok(None), "Hi.") == "Hi.\n"  # a base model: the rule of `units stats` and the tasks
    for tok in (_Tok("{{ x }}"), _Tok(None)):  # the unit statistics build their prompts with the same function
        assert _chat(tok, "Hi.", True) == chat_prompt(tok, "Hi.")
        assert _chat(tok, "Hi.", False) == "Hi.\n"


@pytest.mark.parametrize(("config", "tok_eos", "expect"), [
    (2, 2, [2]),                # one id, the same in both
    ([1, 106], 1, [1, 106]),    # the generation config also ends a turn at 106
    (None, 2, [2]),             # no generation config's id: the tokenizer's
    (7, None, [7]),
    (None, None, []),
])
def test_generation_stops_at_the_config_ids_and_the_tokenizer_eos(config, tok_eos, expect):
    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=config))
    assert stop_token_ids(model, _Tok(None, eos_token_id=tok_eos)) == expect
    assert stop_token_ids(SimpleNamespace(), _Tok(None, eos_token_id=tok_eos)) == ([] if tok_eos is None else [tok_eos])

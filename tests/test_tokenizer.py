"""Tokenizer and chat templates: golden strings, the official R1 jinja template, and transformers as an oracle."""

import json
import string

import pytest

from r1kit.errors import R1kitError
from r1kit.tokenizer import (
    R1_ASSISTANT,
    R1_BOS,
    R1_EOS,
    R1_USER,
    THINK_CLOSE,
    THINK_OPEN,
    Tokenizer,
    render_jinja,
    render_r1,
    render_r1_zero,
)

# The official DeepSeek-R1 chat_template (revised, generation prompt ends "<think>\n"), reconstructed from
# docs/ARCHITECTURE.md 7.2 without the tool-call branches.
OFFICIAL_R1 = (
    r"{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    r"{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='', is_first_sp=true) %}"
    r"{%- for message in messages %}{%- if message['role'] == 'system' %}{%- if ns.is_first_sp %}"
    r"{% set ns.system_prompt = ns.system_prompt + message['content'] %}{% set ns.is_first_sp = false %}"
    r"{%- else %}{% set ns.system_prompt = ns.system_prompt + '\n\n' + message['content'] %}{%- endif %}"
    r"{%- endif %}{%- endfor %}{{ bos_token }}{{ ns.system_prompt }}"
    r"{%- for message in messages %}"
    r"{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}{{'<｜User｜>' + message['content']}}{%- endif %}"
    r"{%- if message['role'] == 'assistant' and 'tool_calls' not in message %}{%- if ns.is_tool %}"
    r"{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- set ns.is_tool = false -%}"
    r"{%- else %}{% set content = message['content'] %}{% if '</think>' in content %}"
    r"{% set content = content.split('</think>')[-1] %}{% endif %}"
    r"{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}"
    r"{%- endfor -%}{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}{% endif %}"
    r"{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜><think>\n'}}{% endif %}"
)

CHATS = [
    [{"role": "user", "content": "Hi"}],
    [
        {"role": "user", "content": "1+1?"},
        {"role": "assistant", "content": "<think>\nR\n</think>\n\nA"},
        {"role": "user", "content": "and 2+2?"},
    ],
    [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": "no reasoning here"},
        {"role": "user", "content": "y <think> z"},
        {"role": "assistant", "content": "a</think>b</think>c"},
    ],
]


def test_constants_use_fullwidth_bar_and_lower_block():
    assert R1_BOS == "<\uff5cbegin\u2581of\u2581sentence\uff5c>"
    assert R1_EOS == "<\uff5cend\u2581of\u2581sentence\uff5c>"
    assert (R1_USER, R1_ASSISTANT) == ("<\uff5cUser\uff5c>", "<\uff5cAssistant\uff5c>")
    assert "|" not in R1_BOS + R1_EOS + R1_USER + R1_ASSISTANT and "_" not in R1_BOS
    assert (THINK_OPEN, THINK_CLOSE) == ("<think>", "</think>")


# --- golden strings -----------------------------------------------------------------------------------------------


def test_render_r1_single_turn():
    assert render_r1(CHATS[0]) == "<｜begin▁of▁sentence｜><｜User｜>Hi<｜Assistant｜><think>\n"
    assert render_r1(CHATS[0], think_prefill=False) == "<｜begin▁of▁sentence｜><｜User｜>Hi<｜Assistant｜>"
    assert render_r1(CHATS[0], add_generation_prompt=False) == "<｜begin▁of▁sentence｜><｜User｜>Hi"


def test_render_r1_multi_turn_strips_history_reasoning():
    assert render_r1(CHATS[1]) == (
        "<｜begin▁of▁sentence｜><｜User｜>1+1?<｜Assistant｜>\n\nA<｜end▁of▁sentence｜>"
        "<｜User｜>and 2+2?<｜Assistant｜><think>\n"
    )
    # Only text after the LAST </think> survives; assistant text without the tag is kept as is.
    assert render_r1(CHATS[2], add_generation_prompt=False) == (
        "<｜begin▁of▁sentence｜><｜User｜>x<｜Assistant｜>no reasoning here<｜end▁of▁sentence｜>"
        "<｜User｜>y <think> z<｜Assistant｜>c<｜end▁of▁sentence｜>"
    )


def test_render_r1_merges_system_into_first_user_turn():
    msgs = [
        {"role": "system", "content": "S1"},
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "system", "content": "S2"},
        {"role": "user", "content": "Q2"},
    ]
    assert render_r1(msgs) == (
        "<｜begin▁of▁sentence｜><｜User｜>S1\n\nS2\n\nQ1<｜Assistant｜>A1<｜end▁of▁sentence｜>"
        "<｜User｜>Q2<｜Assistant｜><think>\n"
    )
    # The official template puts the same system text right after bos with no role tag; ours differs on purpose.
    official = render_jinja(OFFICIAL_R1, msgs, R1_BOS, R1_EOS)
    assert official.startswith("<｜begin▁of▁sentence｜>S1\n\nS2<｜User｜>Q1")
    assert official.replace("S1\n\nS2<｜User｜>Q1", "<｜User｜>S1\n\nS2\n\nQ1") == render_r1(msgs)


def test_render_r1_zero_verbatim():
    assert render_r1_zero("What is 2+3?") == (
        "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
        "The assistant first thinks about the reasoning process in the mind and then provides the user with the "
        "answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
        "respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. "
        "User: What is 2+3?. Assistant:"
    )
    tok = Tokenizer.builtin()
    msgs = [{"role": "system", "content": "ignored"}, {"role": "user", "content": "old"},
            {"role": "assistant", "content": "a"}, {"role": "user", "content": "new"}]
    assert tok.render(msgs, template="r1-zero") == render_r1_zero("new")


@pytest.mark.parametrize("chat", CHATS)
@pytest.mark.parametrize("gen", [True, False])
def test_official_jinja_matches_render_r1(chat, gen):
    assert render_jinja(OFFICIAL_R1, chat, R1_BOS, R1_EOS, add_generation_prompt=gen) == render_r1(chat, gen)


# --- transformers as the oracle -------------------------------------------------------------------------------------


def test_saved_tokenizer_matches_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = Tokenizer.builtin()
    tok.chat_template = OFFICIAL_R1
    tok.save(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)

    texts = ["Hello, world!", "a\n\n  b\tc", "<think>\nx</think> <answer>42</answer>", f"{R1_USER}q{R1_ASSISTANT}"]
    for text in texts:
        assert hf(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
        assert hf(text)["input_ids"] == tok.encode(text, add_bos=True)  # both prepend exactly one bos
        assert hf.decode(tok.encode(text)) == tok.decode(tok.encode(text))
    for chat in CHATS:
        rendered = hf.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        assert rendered == tok.render(chat, template="model") == render_r1(chat)
        ids = hf.apply_chat_template(chat, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
        assert ids == tok.encode_chat(chat, template="model") == tok.encode_chat(chat)

    # Our own loader reads back what save() wrote.
    back = Tokenizer.from_file(tmp_path)
    assert back.tk.get_vocab() == tok.tk.get_vocab()
    assert (back.bos_id, back.eos_id, back.add_bos, back.chat_template) == (0, 1, True, OFFICIAL_R1)


# --- builtin tokenizer ----------------------------------------------------------------------------------------------


def test_builtin_round_trip_and_unknown_chars():
    tok = Tokenizer.builtin()
    text = string.printable.replace("\t", "").replace("\r", "").replace("\x0b", "").replace("\x0c", "") + "\n\n end"
    ids = tok.encode(text)
    assert len(ids) == len(text)  # one id per character
    assert tok.decode(ids) == text
    unk = tok.token_to_id("<unk>")
    assert tok.encode("é\t") == [unk, unk]


def test_builtin_special_tokens_are_single_ids():
    tok = Tokenizer.builtin()
    for t in (R1_BOS, R1_EOS, R1_USER, R1_ASSISTANT, THINK_OPEN, THINK_CLOSE, "<answer>", "</answer>", "<pad>"):
        i = tok.token_to_id(t)
        assert tok.encode(f"a{t}b") == [tok.token_to_id("a"), i, tok.token_to_id("b")]
        assert tok.id_to_token(i) == t
    # Role/bos/eos tokens are special (dropped by skip_special_tokens); reasoning tags are kept for parsing.
    ids = tok.encode(f"{R1_BOS}{R1_USER}q{R1_ASSISTANT}<think>r</think>a{R1_EOS}")
    assert tok.decode(ids, skip_special_tokens=True) == "q<think>r</think>a"


def test_builtin_vocab_is_deterministic():
    a, b = Tokenizer.builtin(), Tokenizer.builtin()
    assert a.tk.get_vocab() == b.tk.get_vocab()
    assert a.vocab_size == 106
    assert (a.bos_id, a.eos_id, a.token_to_id(" "), a.token_to_id("\n")) == (0, 1, 10, 105)
    assert a.encode("Hi", add_bos=True) == [0, a.token_to_id("H"), a.token_to_id("i")]


def test_encode_chat_has_exactly_one_bos():
    tok = Tokenizer.builtin()
    for template in ("r1", "r1-zero"):
        ids = tok.encode_chat(CHATS[1], template=template)
        assert ids[0] == tok.bos_id and ids.count(tok.bos_id) == 1
    ids = tok.encode_chat(CHATS[0])
    assert ids == [0, tok.token_to_id(R1_USER), tok.token_to_id("H"), tok.token_to_id("i"),
                   tok.token_to_id(R1_ASSISTANT), tok.token_to_id(THINK_OPEN), tok.token_to_id("\n")]
    assert tok.decode(ids) == render_r1(CHATS[0])


# --- loading --------------------------------------------------------------------------------------------------------


def test_from_file_reads_config_variants(tmp_path):
    Tokenizer.builtin().tk.save(str(tmp_path / "tokenizer.json"))
    # Only tokenizer.json: bos/eos unknown, add_bos falls back to the post-processor (none without a bos token).
    bare = Tokenizer.from_file(tmp_path / "tokenizer.json")
    assert (bare.bos_id, bare.eos_id, bare.chat_template, bare.add_bos) == (None, None, None, False)
    # AddedToken dicts, a list of named templates, no add_bos_token flag (the post-processor prepends bos).
    cfg = {
        "bos_token": {"content": R1_BOS, "__type": "AddedToken"},
        "eos_token": R1_EOS,
        "chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default", "template": OFFICIAL_R1}],
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    tok = Tokenizer.from_file(tmp_path)
    assert (tok.bos_id, tok.eos_id, tok.chat_template, tok.add_bos) == (0, 1, OFFICIAL_R1, True)
    # chat_template.jinja (newer transformers) is used when the config has none.
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": False}), encoding="utf-8")
    (tmp_path / "chat_template.jinja").write_text("{{ messages[0]['content'] }}", encoding="utf-8")
    tok = Tokenizer.from_file(tmp_path)
    assert tok.render(CHATS[0], template="model") == "Hi" and tok.add_bos is False


# --- bad input ------------------------------------------------------------------------------------------------------


def test_missing_or_bad_files_name_the_path(tmp_path):
    missing = tmp_path / "nope" / "tokenizer.json"
    with pytest.raises(R1kitError, match=str(missing)):
        Tokenizer.from_file(missing)
    with pytest.raises(R1kitError, match="tokenizer.json"):
        Tokenizer.from_file(tmp_path)  # a folder without tokenizer.json
    (tmp_path / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(R1kitError, match=str(tmp_path / "tokenizer.json")):
        Tokenizer.from_file(tmp_path)
    Tokenizer.builtin().tk.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text("[1, 2", encoding="utf-8")
    with pytest.raises(R1kitError, match="tokenizer_config.json"):
        Tokenizer.from_file(tmp_path)


def test_bad_templates_and_messages():
    tok = Tokenizer.builtin()
    with pytest.raises(R1kitError, match="unknown chat template 'chatml'"):
        tok.render(CHATS[0], template="chatml")
    with pytest.raises(R1kitError, match="no chat_template"):
        tok.render(CHATS[0], template="model")
    for template in ("r1", "r1-zero"):
        with pytest.raises(R1kitError, match="no messages"):
            tok.render([], template=template)
    with pytest.raises(R1kitError, match="no messages"):
        render_jinja(OFFICIAL_R1, [], R1_BOS, R1_EOS)
    with pytest.raises(R1kitError, match="role 'robot'"):
        render_r1([{"role": "robot", "content": "x"}])
    with pytest.raises(R1kitError, match="string content"):
        render_r1([{"role": "user", "content": [{"type": "text", "text": "x"}]}])
    with pytest.raises(R1kitError, match="needs a user message"):
        render_r1([{"role": "system", "content": "s"}])
    with pytest.raises(R1kitError, match="roles must alternate"):
        render_jinja("{{ raise_exception('roles must alternate') }}", CHATS[0], None, None)
    with pytest.raises(R1kitError, match="syntax error"):
        render_jinja("{% if %}", CHATS[0], None, None)


def test_train_bpe_compresses_template_and_keeps_tags(tmp_path):
    from r1kit.tokenizer import render_r1_zero

    texts = [render_r1_zero(f"{i}+{i * 7 % 13}") + f" <think>{i}+1={i + 1}</think> <answer>{i + 1}</answer>"
             for i in range(300)]
    tok = Tokenizer.train_bpe(texts, 384)
    ids = tok.encode(texts[5])
    assert tok.decode(ids) == texts[5]
    assert len(ids) < len(texts[5]) / 3  # words merge
    assert [tok.id_to_token(i) for i in tok.encode("123")] == ["1", "2", "3"]  # digits never merge
    for tag in ["<think>", "</think>", "<answer>", "</answer>"]:
        assert len(tok.encode(tag)) == 1
    assert "</think> <answer>6</answer>" in tok.decode(ids, skip_special_tokens=True)
    assert (tok.bos_id, tok.eos_id) == (0, 1)
    assert Tokenizer.train_bpe(texts, 384).encode(texts[7]) == tok.encode(texts[7])  # deterministic
    tok.save(tmp_path)
    assert Tokenizer.from_file(tmp_path).encode(texts[5]) == ids


@pytest.mark.parametrize("template", ["r1", "r1-zero"])
def test_template_travels_with_the_checkpoint_as_hf_jinja(tmp_path, template):
    """tokenizer_config.json records which template the model was trained for, and a jinja chat_template that
    renders the same text as r1kit's own renderer (what transformers' apply_chat_template would produce)."""
    from r1kit.tokenizer import render_jinja
    tok = Tokenizer.builtin()
    tok.template = template
    tok.save(tmp_path)
    back = Tokenizer.from_file(tmp_path)
    assert back.template == template
    chats = [[{"role": "user", "content": "What is 2+3?"}],
             [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
              {"role": "assistant", "content": "<think>x</think>\n\nHello"}, {"role": "user", "content": "7*8?"}]]
    for msgs in chats:
        want = tok.render(msgs)
        if template == "r1-zero":
            want = tok.bos_token + want  # the jinja writes bos as text; encode_chat adds it as an id otherwise
        assert render_jinja(back.chat_template, msgs, tok.bos_token, tok.eos_token, True) == want
        assert back.encode_chat(msgs) == tok.encode_chat(msgs)

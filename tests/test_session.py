"""Sessions, chat templates and the generate / chat commands."""
import subprocess
import sys

import numpy as np
import pytest

import pyfoundry as pf
from pyfoundry.chat import ChatTemplate, ChatTemplateError

from conftest import shared_file


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return pf.testing.synthetic_model(tmp_path_factory.mktemp("s") / "m.gguf", "llama", "q8_0",
                                      context_length=256)


def test_generate_greedy_reproduces_stories260k_golden_text(stories_path):
    golden = shared_file("stories260K.greedy200.txt").read_text()
    s = pf.Model(stories_path).session()
    assert s.generate("", max_tokens=200, stream=False) == golden
    assert s.stop_reason == "length" and len(s.tokens) == 201


def test_streamed_pieces_join_to_the_whole_text(stories_path):
    m = pf.Model(stories_path)
    pieces = list(m.session().generate("", max_tokens=60))
    assert len(pieces) > 10
    assert "".join(pieces) == m.session().generate("", max_tokens=60, stream=False)


def test_stop_strings_end_generation_without_the_stop_text(stories_path):
    s = pf.Model(stories_path).session()
    out = s.generate("", max_tokens=200, stop=["Lily"], stream=False)
    assert out == "Once upon a time, there was a little girl named " and s.stop_reason == "stop"


def test_seeded_sampling_is_deterministic(stories_path):
    m = pf.Model(stories_path)
    a = m.session(pf.Sampler(temperature=1.0, seed=5)).generate("", max_tokens=40, stream=False)
    b = m.session(pf.Sampler(temperature=1.0, seed=5)).generate("", max_tokens=40, stream=False)
    c = m.session(pf.Sampler(temperature=1.0, seed=6)).generate("", max_tokens=40, stream=False)
    assert a == b and a != c


def test_full_context_stops_with_a_reason(stories_path):
    s = pf.Model(stories_path, context_length=20).session()
    out = s.generate("", max_tokens=100, stream=False)
    assert s.stop_reason == "context" and len(s.tokens) == 20 and out
    assert s.generate("more", max_tokens=5, stream=False) == "" and s.stop_reason == "context"


def test_chat_turn_two_with_cached_history_equals_a_fresh_pass(synthetic):
    m = pf.Model(synthetic)
    s = m.session(system="You are terse.")
    r1 = s.chat("Hello there", max_tokens=6, stream=False)
    assert s.messages[-1] == {"role": "assistant", "content": r1}
    n1 = len(s.tokens)
    s.chat("And again?", max_tokens=0, stream=False)  # prefill of turn 2 only
    assert len(s.tokens) > n1
    cached = s.last_logits
    fresh = pf.Model(synthetic).forward(s.tokens, logits="last")
    np.testing.assert_allclose(cached, fresh, rtol=2e-5, atol=2e-5)
    # the cache holds exactly the template's rendering of the conversation so far
    text = s.template.render(s.messages, add_generation_prompt=True)
    assert text.startswith(s._rendered[: len(text)])


def test_chat_reset_forgets_history(synthetic):
    s = pf.Model(synthetic).session()
    s.chat("hi", max_tokens=3, stream=False)
    s.reset()
    assert s.tokens == [] and s.messages == []


def test_default_template_is_chatml_and_file_template_is_used():
    t = ChatTemplate(None)
    out = t.render([{"role": "user", "content": "hi"}])
    assert out == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    t2 = ChatTemplate("{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}"
                      "{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}",
                      bos_token="<s>")
    assert t2.render([{"role": "user", "content": "x"}]) == "<s>[user]x[assistant]"
    assert t2.render_turn([{"role": "user", "content": "x"}],
                          {"role": "assistant", "content": "y"}, False) == "[assistant]y"


HOSTILE = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.environ }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ self._TemplateReference__context }}",
    "{% for i in range(10**9) %}{% endfor %}",
    "{{ messages.append(1) }}",
    "{{ raise_exception('no') }}",
    "{% for %}",
    "{{ namespace.__init__.__globals__ }}",
]


@pytest.mark.parametrize("src", HOSTILE)
def test_hostile_templates_fail_with_a_clear_error(src):
    with pytest.raises(ChatTemplateError):
        ChatTemplate(src).render([{"role": "user", "content": "hi"}])


def run_cli(*args, stdin=""):
    r = subprocess.run([sys.executable, "-m", "pyfoundry.cli", *args], input=stdin,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r


def test_cli_generate_temperature_zero_prints_golden_text(stories_path):
    golden = shared_file("stories260K.greedy200.txt").read_text()
    out = run_cli("generate", str(stories_path), "-p", "", "-n", "200", "--temp", "0").stdout
    assert out == golden + "\n"
    js = run_cli("generate", str(stories_path), "-n", "5", "--temp", "0.7", "--seed", "1",
                 "--json").stdout
    import json
    d = json.loads(js)
    assert d["stop_reason"] == "length" and len(d["tokens"]) == 6


def test_cli_chat_through_a_pipe(synthetic):
    r = run_cli("chat", synthetic, "-n", "4", "--prompt", "first", "--prompt", "second",
                "--verbose", stdin="third\n/reset\nfourth\n/quit\nnever\n")
    out = r.stdout
    assert "> first" in out and "> second" in out and "> third" in out and "> fourth" in out
    assert "[conversation reset]" in out and "never" not in out
    assert "tok/s" in r.stderr


def test_chat_template_override_file(synthetic, tmp_path):
    tpl = tmp_path / "t.jinja"
    tpl.write_text("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>")
    r = run_cli("chat", synthetic, "-n", "2", "--chat-template", str(tpl), stdin="hey\n")
    assert "> hey" in r.stdout


def test_cli_chat_ctrl_c_stops_the_reply_not_the_program(tmp_path):
    import signal
    import time
    path = pf.testing.synthetic_model(tmp_path / "big.gguf", "llama", "q8_0", n_layers=2,
                                      context_length=100000)
    # the reply must still be running when the signal comes: end-of-generation ids are
    # switched off, so a synthetic model's greedy text cannot stop by itself early
    runner = ("import sys; import pyfoundry.session as s; s.Session.eog_ids = lambda self: set(); "
              "from pyfoundry.cli import main; sys.exit(main(sys.argv[1:]))")
    p = subprocess.Popen([sys.executable, "-c", runner, "chat", path, "-n", "90000",
                          "--temp", "0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    p.stdin.write("talk forever\n")
    p.stdin.flush()
    time.sleep(3.0)
    p.send_signal(signal.SIGINT)
    time.sleep(0.5)
    out, err = p.communicate("/quit\n", timeout=120)
    assert p.returncode == 0, err
    assert "[interrupted]" in err

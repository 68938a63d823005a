"""chat.py: sample mode (--prompt), the interactive loop in a pseudo-terminal, and bad checkpoints."""
import os
import pty
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest
from tiny_checkpoint import save_tiny_run, tiny_config

import hamner.commands.chat as chat
from hamner.data.chat_format import STOP_STRINGS, prompt_for_reply
from hamner.data.tokenizer import load_tokenizer
from hamner.use.generate import generate
from hamner.use.hf import export_hf

ROOT = Path(__file__).resolve().parent.parent
BYTES = load_tokenizer("bytes")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(run directory, model) of a tiny random byte-level model with a 128-token context."""
    path = tmp_path_factory.mktemp("chat") / "run"
    return path, save_tiny_run(path, tiny_config(max_seq_len=128))


def greedy_text(model, prompt: str, max_new: int, stops=()) -> str:
    ids = [BYTES.eos_id] + BYTES.encode(prompt)  # chat.py starts every prompt as a training document starts
    out = generate(model, ids, max_new, temperature=0.0, eos_id=BYTES.eos_id, stop_strings=stops,
                   decode=BYTES.decode)[0]
    return BYTES.decode(out)


def test_prompt_mode_prints_the_greedy_completion(run, python, subprocess_env):
    path, model = run
    prompt = "Once upon a time"
    done = subprocess.run([python, str(ROOT / "chat.py"), "--checkpoint", str(path), "--prompt", prompt,
                           "--temperature", "0", "--max-new-tokens", "24", "--device", "cpu"],
                          env=subprocess_env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    expected = prompt + greedy_text(model, prompt, 24)
    assert done.stdout.decode("utf-8").rstrip("\n") == expected.rstrip("\n")


def test_chat_flag_replies_in_the_chat_format(run, capsys):
    path, model = run
    assert chat.main(["--checkpoint", str(path), "--prompt", "Hi there", "--chat", "--temperature", "0",
                      "--max-new-tokens", "30", "--system", "Be brief."]) == 0
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    expected = greedy_text(model, prompt_for_reply(messages), 30, STOP_STRINGS)
    assert capsys.readouterr().out.rstrip("\n") == expected.rstrip("\n")


def test_prompt_mode_reads_an_exported_hugging_face_directory(run, tmp_path, capsys):
    _, model = run
    export_hf(model, model.config, tmp_path / "hf", eos_id=BYTES.eos_id)
    assert chat.main(["--checkpoint", str(tmp_path / "hf"), "--prompt", "Hello", "--temperature", "0",
                      "--max-new-tokens", "20"]) == 0
    assert capsys.readouterr().out.rstrip("\n") == ("Hello" + greedy_text(model, "Hello", 20)).rstrip("\n")


def test_seeded_samples_repeat_and_differ_from_each_other(run, capsys):
    path, _ = run
    argv = ["--checkpoint", str(path), "--prompt", "The cat", "--n", "2", "--seed", "5", "--max-new-tokens", "16",
            "--temperature", "1.0"]
    assert chat.main(argv) == 0
    first = capsys.readouterr().out
    assert chat.main(argv) == 0
    assert capsys.readouterr().out == first
    samples = first.split("\n---\n")
    assert len(samples) == 2 and all(s.startswith("The cat") for s in samples)
    assert samples[0] != samples[1]


def test_context_is_trimmed_by_whole_turns_keeping_the_system_prompt():
    conversation = chat.Conversation(BYTES, context=300, system="You are kind.")
    for i in range(6):
        conversation.turns += [{"role": "user", "content": f"question {i} " + "x" * 20},
                               {"role": "assistant", "content": f"answer {i} " + "y" * 20}]
    conversation.turns.append({"role": "user", "content": "last question"})
    everything = list(conversation.turns)
    ids, cut = conversation.prompt_ids(reply_room=60)
    assert not cut and len(ids) <= 240
    assert ids[0] == BYTES.eos_id
    text = BYTES.decode(ids[1:])
    assert text == prompt_for_reply(conversation.messages())
    assert text.startswith("<|system|>\nYou are kind.\n<|user|>\nquestion ")
    assert text.endswith("<|user|>\nlast question\n<|assistant|>\n")
    kept = len(conversation.turns)
    assert conversation.turns == everything[-kept:] and kept % 2 == 1 and kept < len(everything)
    # As many exchanges as fit are kept: one more would not have fitted.
    one_more = [{"role": "system", "content": "You are kind."}] + everything[-kept - 2:]
    assert 1 + len(BYTES.encode(prompt_for_reply(one_more))) > 240


def test_bad_checkpoints_get_one_error_line_and_status_2(tmp_path, run, capsys):
    path, _ = run
    ckpt = path / "checkpoints" / "step-00000001"
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "config.json").write_bytes((ckpt / "config.json").read_bytes())
    (truncated / "model.safetensors").write_bytes((ckpt / "model.safetensors").read_bytes()[:1000])
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"model_type": "gpt2"}')
    (foreign / "model.safetensors").write_bytes(b"not weights")
    for bad in (tmp_path / "missing", truncated, foreign):
        assert chat.main(["--checkpoint", str(bad), "--prompt", "hi"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err


def _session(python: str, env: dict, args: list[str], steps: list[tuple[bytes, bytes]]) -> tuple[int, str]:
    """Run chat.py in a pseudo-terminal: for each (keys, expected), type keys, then wait until `expected`
    appears after the previous step's match. Returns (exit code, transcript with \r\n turned into \n);
    a child still running 30 s after the last step is killed and reported as exit code None."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: chat.py with the pty as its controlling terminal
        os.execve(python, [python, str(ROOT / "chat.py"), *args], env)
    transcript, pos, status = b"", 0, None
    try:
        for keys, expected in steps:
            if keys == b"\x03":
                # Type Ctrl-C once the prompt waits for input, as a person does: CPython's readline
                # only notices a SIGINT that lands while it waits, not one in the instant before.
                time.sleep(0.5)
            if keys:
                os.write(fd, keys)
            expected = expected.replace(b"\n", b"\r\n")  # the terminal writes newlines as \r\n
            deadline = time.monotonic() + 90
            while (found := transcript.find(expected, pos)) < 0:
                assert time.monotonic() < deadline, f"no {expected!r} in:\n{transcript.decode(errors='replace')}"
                if select.select([fd], [], [], 1.0)[0]:
                    transcript += os.read(fd, 4096)
            pos = found + len(expected)
        deadline = time.monotonic() + 30
        while status is None and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.2)[0]:
                try:
                    transcript += os.read(fd, 4096)
                except OSError:  # EIO: the child closed the terminal
                    pass
            done, code = os.waitpid(pid, os.WNOHANG)
            status = code if done else None
        while select.select([fd], [], [], 0.2)[0]:  # what the child wrote just before it exited
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            transcript += chunk
    finally:
        if status is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
    text = transcript.replace(b"\r\n", b"\n").decode("utf-8", errors="replace")
    return (None if status is None else os.waitstatus_to_exitcode(status)), text


def test_interactive_session_in_a_terminal(run, python, subprocess_env):
    path, _ = run
    args = ["--checkpoint", str(path), "--max-new-tokens", "12", "--device", "cpu", "--temperature", "0"]
    code, text = _session(python, subprocess_env, args, [
        (b"", b"you> "),
        (b"hello\n", b"model> "),
        (b"", b"you> "),
        (b"/temp 0.5\n", b"(temperature 0.5)"),
        (b"/system Be nice.\n", b"(system prompt: Be nice.)"),
        (b"/history\n", b"<|system|>\nBe nice.\n<|user|>\nhello\n<|assistant|>\n"),
        (b"/help\n", b"/quit"),
        (b"/quit\n", b""),
    ])
    assert code == 0, text
    assert "Traceback" not in text


@pytest.mark.parametrize("key", [b"\x04", b"\x03"], ids=["ctrl-d", "ctrl-c"])
def test_ctrl_d_and_ctrl_c_exit_cleanly(run, python, subprocess_env, key):
    path, _ = run
    code, text = _session(python, subprocess_env, ["--checkpoint", str(path), "--device", "cpu"],
                          [(b"", b"you> "), (key, b"")])
    assert code == 0, text
    assert "Traceback" not in text


def test_a_byte_level_checkpoint_with_a_wider_vocabulary_decodes_what_the_tokenizer_lacks(tmp_path, capsys):
    """A model from elsewhere whose vocabulary exceeds the byte tokenizer's 257 ids samples ids >= 257."""
    save_tiny_run(tmp_path / "run", tiny_config(vocab_size=400))
    assert chat.main(["--checkpoint", str(tmp_path / "run"), "--prompt", "Hi", "--temperature", "1",
                      "--seed", "3", "--max-new-tokens", "40", "--device", "cpu"]) == 0
    assert "\ufffd" in capsys.readouterr().out

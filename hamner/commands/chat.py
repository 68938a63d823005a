"""`hamner chat` (or `python chat.py`): talk to a trained Hamner model, or print a few samples from it.

    python chat.py [--checkpoint RUN_OR_CHECKPOINT]          interactive chat (newest run under runs/ by default)
    python chat.py --checkpoint PATH --prompt "Once upon"    one raw completion (add --chat for a chat reply)

Chat uses the exact format the chat training data uses (`data.chat_format`): the model sees
`<|system|>` / `<|user|>` / `<|assistant|>` turns, and a reply ends where the model starts a new
turn or emits end-of-text, as in training. Replies are generated with the KV cache and streamed.
When the conversation outgrows the model's context, the oldest exchanges are dropped whole;
the system prompt is always kept.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

from hamner.commands.parsing import ArgumentParser, command
from hamner.data.chat_format import STOP_STRINGS, format_conversation, prompt_for_reply
from hamner.device import pick_device
from hamner.use.generate import stream
from hamner.use.load import load_for_inference

HELP = """commands:
  /quit             leave (Ctrl-D and Ctrl-C work too)
  /clear            forget the conversation (the system prompt stays)
  /temp N           sampling temperature (0 = greedy)
  /system [TEXT]    set the system prompt; without TEXT, remove it
  /history          show the conversation as the model sees it
  /help             this list"""


def document_start(tokenizer, text: str) -> list[int]:
    """Ids of `text` led by end-of-text: in training every document follows one, so prompts do too."""
    return [tokenizer.eos_id] + tokenizer.encode(text)


class Conversation:
    """The system prompt and the turns so far, turned into prompt ids that fit the model's context."""

    def __init__(self, tokenizer, context: int, system: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.context = context
        self.system = system
        self.turns: list[dict[str, str]] = []

    def messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns

    def prompt_ids(self, reply_room: int) -> tuple[list[int], bool]:
        """Ids of the conversation plus an open assistant turn (led by end-of-text), leaving `reply_room` tokens free.

        Drops the oldest exchanges (a user turn with its reply) until it fits; returns
        (ids, cut) where cut says the newest message alone did not fit and only its end is kept.
        """
        budget = max(1, self.context - reply_room)
        while True:
            ids = document_start(self.tokenizer, prompt_for_reply(self.messages()))
            if len(ids) <= budget or len(self.turns) <= 1:
                break
            self.turns = self.turns[1:]
            while self.turns and self.turns[0]["role"] != "user":
                self.turns = self.turns[1:]
        return ids[-budget:], len(ids) > budget


def reply_stream(model, tokenizer, ids: list[int], args: argparse.Namespace, temperature: float,
                 stop_strings: tuple[str, ...], seed: int | None) -> Iterator[str]:
    """Text pieces of one generated continuation of `ids` (KV cache, stops on end-of-text or a stop string)."""
    return stream(model, ids, args.max_new_tokens, decode=tokenizer.decode, temperature=temperature,
                  top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                  eos_id=tokenizer.eos_id, stop_strings=stop_strings, seed=seed)


def write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def sample(model, tokenizer, args: argparse.Namespace) -> None:
    """--prompt mode: print `args.n` completions (raw text, or a chat reply with --chat) and return."""
    if args.chat:
        conversation = Conversation(tokenizer, model.config.max_seq_len, args.system)
        conversation.turns.append({"role": "user", "content": args.prompt})
        ids, _ = conversation.prompt_ids(args.max_new_tokens)
        stops = STOP_STRINGS
    else:
        ids, stops = document_start(tokenizer, args.prompt), ()
    for i in range(args.n):
        if i:
            write("\n---\n")
        seed = None if args.seed is None else args.seed + i
        text = "" if args.chat else args.prompt
        write(text)
        for piece in reply_stream(model, tokenizer, ids, args, args.temperature, stops, seed):
            text += piece
            write(piece)
        if not text.endswith("\n"):
            write("\n")


def slash_command(line: str, conversation: Conversation, settings: dict) -> bool:
    """Run one /command; returns False when the session should end."""
    name, _, rest = line.partition(" ")
    rest = rest.strip()
    if name == "/quit":
        return False
    if name == "/clear":
        conversation.turns.clear()
        print("(conversation cleared)")
    elif name == "/temp":
        try:
            value = float(rest)
            if value < 0:
                raise ValueError
        except ValueError:
            print("usage: /temp N with N >= 0 (0 = greedy)")
        else:
            settings["temperature"] = value
            print(f"(temperature {value:g})")
    elif name == "/system":
        conversation.system = rest or None
        print(f"(system prompt: {rest})" if rest else "(system prompt removed)")
    elif name == "/history":
        text = format_conversation(conversation.messages())
        print(text.rstrip("\n") if text else "(empty)")
    elif name == "/help":
        print(HELP)
    else:
        print(f"unknown command {name}; /help lists the commands")
    return True


def interact(model, tokenizer, args: argparse.Namespace) -> None:
    """The chat loop: read a line, run a /command or reply to it, until /quit or end of input."""
    try:
        import readline  # noqa: F401  (gives input() line editing and history)
    except ImportError:
        pass
    context = model.config.max_seq_len
    args.max_new_tokens = min(args.max_new_tokens, context // 2)
    conversation = Conversation(tokenizer, context, args.system)
    settings = {"temperature": args.temperature}
    print(f"Hamner chat ({model.num_parameters():,} parameters, context {context} tokens). /help for commands.")
    while True:
        line = input("you> ").strip()
        if not line:
            continue
        if line.startswith("/"):
            if not slash_command(line, conversation, settings):
                return
            continue
        conversation.turns.append({"role": "user", "content": line})
        ids, cut = conversation.prompt_ids(args.max_new_tokens)
        if cut:
            print("(your message is longer than the model's context; only its end is used)")
        write("model> ")
        reply = ""
        for piece in reply_stream(model, tokenizer, ids, args, settings["temperature"], STOP_STRINGS, args.seed):
            reply += piece
            write(piece)
        if not reply.endswith("\n"):
            write("\n")
        conversation.turns.append({"role": "assistant", "content": reply})


def parse_args(argv: list[str] | None, prog: str = "chat.py") -> argparse.Namespace:
    parser = ArgumentParser(prog=prog, description="Chat with a Hamner model, or sample from it with --prompt.")
    parser.add_argument("--checkpoint", help="run directory (its latest checkpoint), checkpoint directory or "
                        "Hugging Face Llama directory; default: the newest run under runs/")
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda or mps")
    parser.add_argument("--prompt", help="print a completion of this text and exit (no chat template unless --chat)")
    parser.add_argument("--chat", action="store_true",
                        help="with --prompt: answer it as a user message in the chat format")
    parser.add_argument("--system", help="system prompt for the conversation")
    parser.add_argument("--n", type=int, default=1, help="with --prompt: number of completions (default 1)")
    parser.add_argument("--max-new-tokens", type=int, default=200,
                        help="most tokens per reply (default 200; in a chat at most half the context)")
    parser.add_argument("--temperature", type=float, default=0.8, help="sampling temperature, 0 = greedy (default 0.8)")
    parser.add_argument("--top-k", type=int, default=50, help="sample from the k most likely tokens (default 50)")
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default 0.95)")
    parser.add_argument("--repetition-penalty", type=float, default=1.0,
                        help="above 1 makes tokens already in the context less likely (default 1.0: off)")
    parser.add_argument("--seed", type=int, help="random seed for reproducible sampling")
    args = parser.parse_args(argv)
    for name, ok in (("n", args.n >= 1), ("max_new_tokens", args.max_new_tokens >= 1),
                     ("temperature", args.temperature >= 0), ("top_k", args.top_k >= 1),
                     ("top_p", 0 < args.top_p <= 1), ("repetition_penalty", args.repetition_penalty > 0)):
        if not ok:
            parser.error(f"invalid --{name.replace('_', '-')} {getattr(args, name)}")
    if args.prompt == "":
        parser.error("--prompt is empty")
    if args.chat and args.prompt is None:
        parser.error("--chat needs --prompt")
    return args


@command()
def main(argv: list[str] | None = None, prog: str = "chat.py") -> int:
    """Chat, or print --n completions of --prompt; end of input or Ctrl-C in the chat ends it normally."""
    args = parse_args(argv, prog)
    model, _, tokenizer = load_for_inference(args.checkpoint, pick_device(args.device))
    try:
        if args.prompt is not None:
            sample(model, tokenizer, args)
        else:
            interact(model, tokenizer, args)
    except (EOFError, KeyboardInterrupt):
        print()
    return 0

